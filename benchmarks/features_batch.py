"""GLCM + shape features of a whole dataset, end to end as a user runs it: ``medsight features
glcm,shape DATA --jobs N`` against pyradiomics' own batch command ``pyradiomics cases.csv --jobs N``,
on the same cores, one after the other.

    .venv/bin/python -m benchmarks.features_batch [--data ../shared/datasets/lidc_vois] [--jobs 2]
                                                  [--repeats 3] [--limit N] [--out bench_runs/features_batch]

Both commands start from nothing (a new process: imports, reading the dataset, every NIfTI file
read from disk, the CSV written) and compute the same features with the same settings: the 24 GLCM
statistics (bin width 25, distance 1, the 13 directions averaged) and the 3D shape features of each
nodule mask, on the original image (pyradiomics: ``imageType: Original``, ``featureClass: glcm,
shape``, ``binWidth: 25``, ``label: 1``, everything else its default, which includes its
diagnostics columns). pyradiomics reads ``cases.csv`` (Image, Mask); medsight reads the
``lidc-voi`` layout and checks it (1346 headers) before it starts.

The two commands run in turns, the order swapped every repeat, so that a change of load on the
machine (the cores may be shared) weighs on both. For each run it records the wall time and the
CPU time (user + sys of the command and its worker processes, from ``getrusage``), and prints
each repeat's ratios pyradiomics / medsight and their median. A warm-up run of each on a few cases
comes first (untimed), so that numba's compiled kernels are in their cache, as after a user's
first run. Finally it checks that the numbers agree: the largest relative difference per feature
over every case (pyradiomics keeps NIfTI zooms as float32 while medsight reads them to 6 decimals,
up to ~1e-6 apart, so volumes differ by up to ~2e-6; MCC differs by pyradiomics' eps).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PARAMS = """imageType:
  Original: {}
featureClass:
  glcm: []
  shape: []
setting:
  binWidth: 25
  label: 1
"""


def command(name: str) -> list[str]:
    """The console script ``name`` beside this Python (the venv's), else ``python -m``."""
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    if name == "medsight":
        return [sys.executable, "-m", "medsight.cli"]
    raise SystemExit(f"{name} is not installed beside {sys.executable}")


def run(argv: list[str]) -> tuple[float, float]:
    """(wall s, CPU s of the command and the processes it waited for) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cases_of(data: Path, limit: int | None) -> list[str]:
    stems = sorted(p.name[: -len(".nii.gz")] for p in (data / "VOIs" / "image").glob("*.nii.gz"))
    return stems[:limit] if limit else stems


def subset(data: Path, stems: list[str], where: Path) -> Path:
    """A lidc-voi folder of links to the chosen cases (the whole dataset: ``data`` itself)."""
    if len(stems) == len(cases_of(data, None)):
        return data
    for folder in ("image", "nodule_mask"):
        (where / "VOIs" / folder).mkdir(parents=True)
        for stem in stems:
            os.symlink(data / "VOIs" / folder / f"{stem}.nii.gz", where / "VOIs" / folder / f"{stem}.nii.gz")
    with open(data / "MetadatabyNoduleMaxVoting.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    keep = [r for r in rows if f"{r['patient_id']}_R_{int(float(r['nodule_id']))}" in set(stems)]
    with open(where / "MetadatabyNoduleMaxVoting.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(keep)
    return where


def write_cases(data: Path, stems: list[str], path: Path) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Image", "Mask"])
        for stem in stems:
            writer.writerow([data / "VOIs" / "image" / f"{stem}.nii.gz", data / "VOIs" / "nodule_mask" / f"{stem}.nii.gz"])
    return path


def agreement(ours: Path, theirs: Path) -> tuple[int, dict[str, float]]:
    """(cases compared, largest relative difference per feature) of the two CSVs."""
    with open(ours, newline="") as fh:
        mine = {row["id"]: row for row in csv.DictReader(fh)}
    worst: dict[str, float] = {}
    n = 0
    with open(theirs, newline="") as fh:
        for row in csv.DictReader(fh):
            stem = Path(row["Image"]).name[: -len(".nii.gz")]
            n += 1
            for key, value in row.items():
                if not key.startswith("original_"):
                    continue
                name = key.split("_", 2)[2]
                a, b = float(mine[stem][name]), float(value)
                worst[name] = max(worst.get(name, 0.0), abs(a - b) / max(abs(b), 1e-12))
    return n, worst


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/lidc_vois"))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=int, help="only the first N cases")
    parser.add_argument("--out", type=Path, help="keep both CSVs of the last repeat here")
    args = parser.parse_args(argv)
    data = args.data.resolve()
    if not (data / "VOIs" / "image").is_dir():
        raise SystemExit(f"{data}: not the lidc-voi layout (VOIs/image, VOIs/nodule_mask, MetadatabyNoduleMaxVoting.csv)")
    stems = cases_of(data, args.limit)
    work = Path(tempfile.mkdtemp(prefix="features_batch."))
    try:
        root = subset(data, stems, work / "data")
        cases = write_cases(data, stems, work / "cases.csv")
        (work / "params.yaml").write_text(PARAMS)
        warm = work / "warm"
        warm_root = subset(data, stems[:8], warm / "data")
        write_cases(data, stems[:8], warm / "cases.csv")
        (warm / "params.yaml").write_text(PARAMS)

        def medsight(tag, where=root):
            return command("medsight") + ["features", "glcm,shape", str(where), "--jobs", str(args.jobs),
                                          "--out", str(work / f"medsight_{tag}.csv")]

        def pyradiomics(tag, table=cases, params=work / "params.yaml"):
            return command("pyradiomics") + [str(table), "-p", str(params), "-o", str(work / f"pyradiomics_{tag}.csv"),
                                             "-f", "csv", "--jobs", str(args.jobs)]

        run(medsight("warm", warm_root))
        run(pyradiomics("warm", warm / "cases.csv", warm / "params.yaml"))
        print(f"# {len(stems)} cases of {data}, --jobs {args.jobs}, {os.cpu_count()} CPUs "
              f"({platform.processor() or platform.machine()}), Python {platform.python_version()}")
        print("| repeat | load before | medsight wall s | medsight CPU s | pyradiomics wall s | pyradiomics CPU s "
              "| ratio wall | ratio CPU |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        ratios = []
        for k in range(args.repeats):
            load = os.getloadavg()[0]
            order = ("medsight", "pyradiomics") if k % 2 == 0 else ("pyradiomics", "medsight")
            times = {name: run(medsight(k) if name == "medsight" else pyradiomics(k)) for name in order}
            (mw, mc), (pw, pc) = times["medsight"], times["pyradiomics"]
            ratios.append((pw / mw, pc / mc))
            print(f"| {k + 1} | {load:.1f} | {mw:.2f} | {mc:.2f} | {pw:.2f} | {pc:.2f} | {pw / mw:.1f} | {pc / mc:.1f} |",
                  flush=True)
        wall, cpu = np.array(ratios).T
        print(f"\nmedian ratio pyradiomics / medsight: wall {np.median(wall):.1f} (range {wall.min():.1f} - "
              f"{wall.max():.1f}), CPU {np.median(cpu):.1f} (range {cpu.min():.1f} - {cpu.max():.1f})")
        last = args.repeats - 1
        n, worst = agreement(work / f"medsight_{last}.csv", work / f"pyradiomics_{last}.csv")
        glcm = {k: v for k, v in worst.items() if k in _glcm_names()}
        shape = {k: v for k, v in worst.items() if k not in glcm}
        print(f"agreement over {n} cases, largest relative difference: GLCM {max(glcm.values()):.1e} "
              f"({max(glcm, key=glcm.get)}), shape {max(shape.values()):.1e} ({max(shape, key=shape.get)}); "
              f"{len(glcm)} GLCM and {len(shape)} shape features compared")
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            for name in (f"medsight_{last}.csv", f"pyradiomics_{last}.csv"):
                shutil.copy(work / name, args.out / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _glcm_names() -> set[str]:
    from medsight.features.glcm import GLCM_FEATURES

    return set(GLCM_FEATURES)


if __name__ == "__main__":
    main()

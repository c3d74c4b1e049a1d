"""Fixed-seed CPU runs whose predictions must not change when the code is restructured.

Each case trains one config with the CLI (fixed seed, few epochs), predicts a fixed input and keeps
what came out: the probabilities of ``predictions.csv`` and a digest of every mask and map PNG.

    python -m benchmarks.parity record benchmarks/parity      # once, on the code before a refactor
    python -m benchmarks.parity check benchmarks/parity       # after it: max |dp| <= 1e-6, same masks

``--only NAME`` runs some cases; the real-data cases need ``--datasets`` (default ../shared/datasets)
and are skipped, saying so, when it is absent. Runs go to a temporary folder (``--work`` keeps them).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from medsight.cli import main as medsight

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-6

# name -> (config, input: a dataset folder under --datasets or one of SYNTHETIC, train args, predict args)
# The runs keep the protocol the outputs were recorded with: decisions at the fixed 0.5 (issue 18 made
# the validation-chosen threshold the default) and stacking on seen cases (issue 18's held-back default).
FIXED = ["--set", "predict.decision=fixed"]
CASES: dict[str, tuple[str, str | None, list[str], list[str]]] = {
    "demo_resnet": ("demo_resnet.yaml", "synth24", ["--epochs", "2", *FIXED], ["--maps", "gradcam"]),
    "demo_unet": ("demo_unet.yaml", "synth24", ["--epochs", "2"], []),
    "ph2_resnet": ("ph2_resnet.yaml", "ph2", ["--epochs", "2", *FIXED], []),
    "lidc_voi_multiview_svm": ("lidc_voi_multiview_svm.yaml", "lidc_vois", FIXED, []),
    "lidc_voi_fuse_tsd": ("lidc_voi_fuse_tsd.yaml", "lidc_vois",
                          ["--epochs", "2", "--set", "head.options.n_estimators=3", "--set", "head.options.steps=50",
                           "--set", "features.cnn.head_cases=seen", *FIXED], []),
    "ph2_fgfv": ("ph2_fgfv.yaml", "ph2", ["--epochs", "2", "--set", "features.fisher.scales=[1.0]",
                                          "--set", "features.fisher.weight_cases=seen", *FIXED], []),
    "synthetic_xray_chestnet": ("synthetic_xray_chestnet.yaml", "xray24", ["--epochs", "2"], []),
}
SYNTHETIC = {"synth24", "xray24"}  # inputs the script writes itself


def run(*args: str) -> None:
    code = medsight([str(a) for a in args])
    if code != 0:
        sys.exit(f"medsight {' '.join(map(str, args))} exited with {code}")


def png_digest(path: Path) -> str:
    pixels = np.asarray(Image.open(path))
    return hashlib.sha256(str(pixels.shape).encode() + pixels.tobytes()).hexdigest()[:16]


def outputs(pred_dir: Path) -> dict:
    """The probabilities and decisions of predictions.csv, and a digest of every PNG written beside it."""
    with open(pred_dir / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    pngs = {str(p.relative_to(pred_dir)): png_digest(p) for p in sorted(pred_dir.rglob("*.png"))}
    return {"rows": rows, "pngs": pngs}


def write_xrays(root: Path) -> None:
    """24 generated chest X-rays in the ChestX-ray14 layout (CSV, split lists, grey PNGs)."""
    from medsight.data.synthetic_xray import make_chest_xrays

    (root / "images").mkdir(parents=True)
    lines = ["Image Index,Finding Labels,Patient ID"]
    for s in make_chest_xrays(n=24, size=128, seed=5).samples:
        Image.fromarray(s.image[0], "L").save(root / "images" / f"{s.id}.png")
        lines.append(f"{s.id}.png,{s.diagnosis},{s.patient_id}")
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(line.split(",")[0] for line in lines[1:]) + "\n")
    (root / "test_list.txt").write_text("")


def produce(name: str, datasets: Path, work: Path) -> dict | None:
    config, folder, train_args, predict_args = CASES[name]
    if folder in SYNTHETIC:  # the configs generate their own training data
        data = work / folder
        if not data.exists() and folder == "synth24":
            run("data", "synth", data, "--n", "24", "--size", "128", "--seed", "5")
        elif not data.exists():
            write_xrays(data)
        train_data = []
    else:
        data = datasets / folder
        if not data.is_dir():
            print(f"{name}: skipped ({data} is absent)")
            return None
        train_data = ["--data", data]
    run_dir = work / name
    run("train", ROOT / "configs" / config, "--out", run_dir, "--device", "cpu", *train_data, *train_args)
    run("predict", run_dir, data, "--out", work / f"{name}_pred", "--device", "cpu", *predict_args)
    return outputs(work / f"{name}_pred")


def compare(name: str, want: dict, got: dict) -> list[str]:
    problems = []
    if [r["id"] for r in want["rows"]] != [r["id"] for r in got["rows"]]:
        return [f"{name}: the predicted ids differ"]
    if list(want["rows"][0]) != list(got["rows"][0]):
        return [f"{name}: columns {list(got['rows'][0])} instead of {list(want['rows'][0])}"]
    worst = 0.0
    for a, b in zip(want["rows"], got["rows"]):
        for key in a:
            if key.startswith("p_") or key == "foreground_fraction":
                worst = max(worst, abs(float(a[key]) - float(b[key])))
            elif a[key] != b[key]:
                problems.append(f"{name}: {a['id']} {key} {b[key]!r} instead of {a[key]!r}")
    if worst > TOLERANCE:
        problems.append(f"{name}: probabilities differ by up to {worst:.3g}")
    changed = sorted(k for k in set(want["pngs"]) | set(got["pngs"]) if want["pngs"].get(k) != got["pngs"].get(k))
    if changed:
        problems.append(f"{name}: {len(changed)} PNG(s) differ, e.g. {changed[0]}")
    print(f"{name}: {len(got['rows'])} cases, max |dp| {worst:.2g}, {len(got['pngs'])} PNGs"
          + ("" if not changed else f", {len(changed)} differ"))
    return problems


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["record", "check"])
    parser.add_argument("reference", type=Path, help="folder of the recorded outputs (one JSON per case)")
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--only", nargs="*", choices=list(CASES), help="run only these cases")
    parser.add_argument("--work", type=Path, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="medsight-parity-"))
    problems = []
    try:
        for name in args.only or CASES:
            target = args.reference / f"{name}.json"
            if args.mode == "check" and not target.is_file():
                sys.exit(f"{target}: no recorded outputs for {name}")
            got = produce(name, args.datasets, work)
            if got is None:
                continue
            if args.mode == "record":
                args.reference.mkdir(parents=True, exist_ok=True)
                target.write_text(json.dumps(got, indent=1) + "\n")
                print(f"{name}: recorded {len(got['rows'])} cases -> {target}")
            else:
                problems += compare(name, json.loads(target.read_text()), got)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    if problems:
        sys.exit("\n".join(problems))
    print("all outputs as recorded" if args.mode == "check" else "done")


if __name__ == "__main__":
    main()

"""GLCM speed: medsight against pyradiomics and mahotas on the same volumes, in the same run.

    .venv/bin/python -m benchmarks.glcm_speed [--repeats 30] [--batch 16] [--threads 1] [--device cuda]
                                              [--lidc ../shared/datasets/lidc_vois] [--hu-scale 3] [--full-mask]

For 32^3 and 64^3 volumes of HU-like texture (smoothed noise, integer HU) under an irregular ball mask,
bin width 25, distance 1, 13 directions, all 24 pyradiomics features, it times (median of repeats):

- medsight ``glcm_features`` per volume, and ``glcm_features_batch`` over ``--batch`` volumes (per volume);
- pyradiomics ``RadiomicsGLCM(image, mask, binWidth=25)`` + ``execute()``: construction included, as it
  discretises there (imported lazily; the table says when it is absent);
- mahotas ``haralick(levels, ignore_zeros=True, return_mean=True)`` on the already discretised volume.
  mahotas has no mask: the levels are 0 outside the mask and ignore_zeros drops those pairs. It computes
  13 Haralick features (no MCC), and its discretisation is not timed.

The per-volume calls of the three libraries are timed in turns (each round: a few calls of each, the first
untimed to warm the caches), so that a change of machine load during the run weighs on all of them alike;
the ratios are the ones to quote.
``--hu-scale S`` multiplies the texture's contrast (S = 3: Ng about 110 instead of 35) and ``--full-mask``
masks the whole cube: how the ratios move with the number of grey levels and of voxels.
``--lidc DIR`` adds a table on real data: every nodule VOI of the shared LIDC-IDRI set (int16 HU inside its
nodule mask, same settings), medsight and pyradiomics timed in turns on each, summed over the set.
``--threads N`` limits the BLAS/OpenMP pools (threadpoolctl) of every library for the whole run; the
header records the setting either way. It checks that medsight's values equal pyradiomics' (largest
relative difference over the 24 features) and prints a markdown table with the ratios
pyradiomics / medsight and mahotas / medsight.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from medsight.features.glcm import GLCM_FEATURES, glcm_features, glcm_features_batch
from medsight.features.levels import discretize

BIN_WIDTH = 25


def volume(n: int, seed: int, hu_scale: float = 1.0, full_mask: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(int16 HU-like image, bool mask): soft tissue around 40 HU with a coarse and a fine texture, its
    contrast times hu_scale (more grey levels), inside a lobulated ball or the whole cube."""
    rng = np.random.default_rng(seed)
    coarse = ndimage.gaussian_filter(rng.normal(size=(n, n, n)), 2.0)
    fine = ndimage.gaussian_filter(rng.normal(size=(n, n, n)), 0.7)
    image = 40 + hu_scale * (120 * coarse / coarse.std() + 40 * fine / fine.std())
    z, y, x = (np.indices((n, n, n)) - (n - 1) / 2) / (n / 2)
    r = np.sqrt(z**2 + y**2 + x**2)
    mask = r < 0.85 + 0.1 * np.sin(4 * np.arctan2(y, x)) * np.cos(3 * z)  # a lobulated ball
    return image.round().astype(np.int16), np.ones_like(mask) if full_mask else mask


def median_ms(fn, repeats: int) -> float:
    return interleaved_ms({"fn": fn}, repeats)["fn"]


def interleaved_ms(fns: dict, repeats: int, burst: int = 3) -> dict:
    """Median ms per call of each function, timed in turns: every round calls each one `burst` times in a
    row and times all but the first, which warms the caches up after the other functions ran."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            fn()
            for _ in range(burst - 1):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: 1e3 * float(np.median(t)) for name, t in times.items()}


def pyradiomics_runner(image, mask):
    try:
        import SimpleITK as sitk
        from radiomics import glcm
    except ImportError:
        return None
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    sitk_image, sitk_mask = sitk.GetImageFromArray(image), sitk.GetImageFromArray(mask.astype(np.uint8))

    def run():
        ext = glcm.RadiomicsGLCM(sitk_image, sitk_mask, binWidth=BIN_WIDTH)
        ext.enableAllFeatures()
        return {k: float(v) for k, v in ext.execute().items()}

    return run


def mahotas_runner(image, mask):
    try:
        import mahotas.features
    except ImportError:
        return None
    levels, n_levels = discretize(image, mask, bin_width=BIN_WIDTH)
    levels = levels.astype(np.uint8 if n_levels < 256 else np.uint16)
    return lambda: mahotas.features.haralick(levels, ignore_zeros=True, return_mean=True)


def version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def thread_setting(threads: int | None) -> str:
    """What the run's thread pools were: the --threads limit, OMP_NUM_THREADS, and each BLAS pool's size."""
    try:
        from threadpoolctl import threadpool_info

        pools = ", ".join(f"{p['internal_api']} {p['num_threads']}" for p in threadpool_info())
    except ImportError:
        pools = "threadpoolctl not installed"
    limit = f"--threads {threads}" if threads else "no --threads limit"
    return f"{limit}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; pools: {pools or 'none loaded'}"


@contextlib.contextmanager
def thread_limit(threads: int | None):
    if threads is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads):
        yield


# mahotas' features with the same definition as a pyradiomics one (ASM, contrast, correlation, IDM, entropy)
MAHOTAS_SAME = {0: "JointEnergy", 1: "Contrast", 2: "Correlation", 4: "Idm", 8: "JointEntropy"}


def max_rel_diff(got: dict, want: dict) -> tuple[float, str]:
    rel = {k: abs(got[k] - want[k]) / max(abs(want[k]), 1e-300) for k in want}
    worst = max(rel, key=rel.get)
    return rel[worst], worst


def fmt_ms(ms: float | None) -> str:
    return "absent" if ms is None else f"{ms:.2f}"


def fmt_ratio(num: float | None, den: float) -> str:
    return "n/a" if num is None else f"{num / den:.1f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16, help="volumes per glcm_features_batch call")
    parser.add_argument("--threads", type=int, default=None, help="limit every BLAS/OpenMP pool to N threads")
    parser.add_argument("--device", default=None, help="also time the torch path on this device (cpu, cuda)")
    parser.add_argument("--lidc", default=None, help="also time both libraries on the LIDC VOIs in this folder")
    parser.add_argument("--hu-scale", type=float, default=1.0, help="texture contrast factor (more grey levels)")
    parser.add_argument("--full-mask", action="store_true", help="mask the whole cube instead of a ball")
    args = parser.parse_args()
    with thread_limit(args.threads):
        rows, notes, threads = run(args)
        lidc = lidc_run(Path(args.lidc)) if args.lidc else None
    print_table(args, rows, notes, threads)
    if lidc:
        print_lidc(*lidc)
    elif args.lidc:
        print("\n- --lidc: pyradiomics is not installed, so there is nothing to compare with on the LIDC VOIs")


def lidc_run(folder: Path):
    """(folder, per VOI of the shared LIDC set: (mask voxels, ms ours, ms pyradiomics, max rel. diff, its
    feature)), or None without pyradiomics."""
    import nibabel as nib

    files = sorted((folder / "VOIs" / "image").glob("*.nii.gz"))
    if not files:
        raise SystemExit(f"{folder}: no VOIs/image/*.nii.gz (the shared LIDC VOI layout)")
    out = []
    for path in files:
        image = np.asanyarray(nib.load(path).dataobj)
        mask = np.asanyarray(nib.load(folder / "VOIs" / "nodule_mask" / path.name).dataobj) > 0
        pyrad = pyradiomics_runner(image, mask)
        if pyrad is None:
            return None
        ms = interleaved_ms({"ours": lambda: glcm_features(image, mask, bin_width=BIN_WIDTH), "pyradiomics": pyrad}, 1)
        rel, worst = max_rel_diff(glcm_features(image, mask, bin_width=BIN_WIDTH), pyrad())
        out.append((int(mask.sum()), ms["ours"], ms["pyradiomics"], rel, worst))
    return folder, out


def print_lidc(folder, per_voi) -> None:
    voxels, ours, pyrad, rel, worst = zip(*per_voi)
    i = int(np.argmax(rel))
    print(f"\nReal data: the {len(per_voi)} nodule VOIs of {folder} (mask voxels: median {int(np.median(voxels))}, "
          f"{min(voxels)}-{max(voxels)}); each VOI timed in turns, 2 warm calls each\n")
    print("| VOIs | ours, s in all | pyradiomics, s in all | pyradiomics / ours | ours, median ms per VOI "
          "| pyradiomics, median ms per VOI | max rel. diff vs pyradiomics |")
    print("|---" * 7 + "|")
    print(f"| {len(per_voi)} | {sum(ours) / 1e3:.3f} | {sum(pyrad) / 1e3:.2f} | {sum(pyrad) / sum(ours):.1f}x "
          f"| {np.median(ours):.3f} | {np.median(pyrad):.2f} | {rel[i]:.1e} ({worst[i]}) |")


def run(args):
    rows, notes = [], []
    for n in (32, 64):
        image, mask = volume(n, n, args.hu_scale, args.full_mask)
        n_levels = discretize(image, mask, bin_width=BIN_WIDTH)[1]
        reps = args.repeats if n == 32 else max(5, args.repeats // 3)
        fns = {"ours": lambda: glcm_features(image, mask, bin_width=BIN_WIDTH)}
        pyrad, mah = pyradiomics_runner(image, mask), mahotas_runner(image, mask)
        if pyrad is not None:
            fns["pyradiomics"] = pyrad
        if mah is not None:
            fns["mahotas"] = mah
        ms = interleaved_ms(fns, reps)

        batch = [volume(n, n + i, args.hu_scale, args.full_mask) for i in range(args.batch)]
        images, masks = [b[0] for b in batch], [b[1] for b in batch]
        batched = median_ms(lambda: glcm_features_batch(images, masks, bin_width=BIN_WIDTH), max(5, reps // 4))
        on_device = None
        values, diff = glcm_features(image, mask, bin_width=BIN_WIDTH), "n/a (pyradiomics absent)"
        if args.device:
            on_device = median_ms(lambda: glcm_features(image, mask, bin_width=BIN_WIDTH, device=args.device), reps)
            rel, worst = max_rel_diff(glcm_features(image, mask, bin_width=BIN_WIDTH, device=args.device), values)
            dev_batched = median_ms(lambda: glcm_features_batch(images, masks, bin_width=BIN_WIDTH,
                                                                device=args.device), max(5, reps // 4))
            notes.append(f"{n}^3 on {args.device}: {on_device:.2f} ms per volume, {dev_batched / args.batch:.2f} ms "
                         f"per volume batched (x{args.batch}); max rel. diff vs the host path {rel:.1e} ({worst})")
        if pyrad is not None:
            reference = pyrad()
            rel, worst = max_rel_diff(values, reference)
            diff = f"{rel:.1e} ({worst})"
            if mah is not None:
                m = mah()
                rel = max(abs(m[i] - reference[k]) / abs(reference[k]) for i, k in MAHOTAS_SAME.items())
                notes.append(f"{n}^3: mahotas vs pyradiomics on the 5 shared definitions: max rel. diff {rel:.1e}")
        rows.append((f"{n}^3", int(mask.sum()), n_levels, ms["ours"], batched / args.batch, on_device,
                     ms.get("pyradiomics"), ms.get("mahotas"), diff))  # fmt: skip
    return rows, notes, thread_setting(args.threads)


def print_table(args, rows, notes, threads) -> None:
    pyrad_v, mahotas_v = version("radiomics"), version("mahotas")
    rounds = f"{args.repeats} rounds at 32^3, {max(5, args.repeats // 3)} at 64^3"
    print(f"GLCM, {len(GLCM_FEATURES)} features, bin width {BIN_WIDTH}, distance 1, 13 directions; ms per volume "
          f"(median; per-volume calls timed in turns, {rounds}, 2 warm calls each)\n")  # fmt: skip
    print(f"- volumes: texture contrast x{args.hu_scale:g}, {'whole cube' if args.full_mask else 'lobulated ball'} "
          "masked")
    print(f"- pyradiomics: {pyrad_v or 'not installed (its columns say absent)'}; "
          f"mahotas: {mahotas_v or 'not installed (its columns say absent)'}; "
          f"numpy {np.__version__}, scipy {version('scipy')}, Python {platform.python_version()}")  # fmt: skip
    print(f"- threads: {threads}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {load:.1f} at the end of the run\n")
    device_col = f" ours on {args.device} |" if args.device else ""
    print(f"| volume | mask voxels | Ng | ours | ours batched (x{args.batch}) |{device_col} pyradiomics | mahotas "
          "| pyradiomics / ours | mahotas / ours | max rel. diff vs pyradiomics |")
    print("|---" * (10 + bool(args.device)) + "|")
    for name, voxels, ng, ours, batched, on_device, pyrad_ms, mah_ms, diff in rows:
        dev = f" {on_device:.2f} |" if args.device else ""
        print(f"| {name} | {voxels} | {ng} | {ours:.2f} | {batched:.2f} |{dev} {fmt_ms(pyrad_ms)} | {fmt_ms(mah_ms)} "
              f"| {fmt_ratio(pyrad_ms, ours)} | {fmt_ratio(mah_ms, ours)} | {diff} |")
    notes = [f"{lib} is not installed: its column says absent and its ratio n/a"
             for lib, v in (("pyradiomics", pyrad_v), ("mahotas", mahotas_v)) if v is None] + notes
    notes += [
        "pyradiomics: RadiomicsGLCM(image, mask, binWidth=25) + execute(), so its discretisation is timed too",
        "mahotas has no mask: it gets the discretised volume, 0 outside the mask, with ignore_zeros=True; "
        "it computes 13 features (no MCC) and its discretisation is not timed",
        "ratios use medsight's per-volume call (glcm_features), not the batched one",
    ]
    print()
    for note in notes:
        print(f"- {note}")


if __name__ == "__main__":
    main()

"""FV vs IFV vs foreground FV on PH2 (5-fold patient-level CV), the ISIC-2017 and the DermaMNIST validation sets.

The three encodings share one CNN per fold: ``configs/ph2_fgfv.yaml`` (or ``isic2017_fgfv.yaml``)
trains it with the fgFV encoding, then the FV and IFV runs read its weights
(``--set features.fisher.encoding=fv|ifv --set features.fisher.cnn_weights=<fgfv run>/model.safetensors``)
so that only the encoding differs. Each run is scored with ``medsight evaluate --split heldout``
(PH2) or ``--split val`` (ISIC-2017, DermaMNIST: their official validation sets, which also chose
the CNN's epoch). Finished runs are reused; ``--skip-ph2`` / ``--skip-isic`` / ``--skip-dermamnist``
leave a dataset out.

    python -m benchmarks.fisher_cv --ph2 ../shared/datasets/ph2 --isic ../shared/datasets/isic2017 --out bench_runs/fisher_cv

``--set KEY=VALUE`` (repeatable) goes to every run, e.g. ``--set features.fisher.weight_cases=held_back``
with its own ``--out``. Under ``crossfit`` (``ph2_fgfv.yaml``'s) the FV and IFV runs read the fgFV
run's k CNNs (cnn_weights names its folder).

On a 2-core CPU the ISIC-2017 CNN is trained at ``--isic-size`` pixels (default 64) for
``--isic-epochs`` epochs (default 15); pass ``--isic-size 128 --isic-epochs 30`` for the config's own setting.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.cv_common import ROOT, at_thresholds, run_fold, write_summary
from medsight.metrics import summarize_repeats
from medsight.report import format_table
from medsight.rundir import RunDir

ENCODINGS = ("fgfv", "ifv", "fv")


def compare(config: str, data: Path, out: Path, folds: list[int | None], n_folds: int, split: str,
            extra: tuple[str, ...] = ()) -> dict[str, list[dict]]:
    """encoding -> one evaluation per fold, the FV and IFV runs reusing the fgFV run's CNN."""
    stem = Path(config).stem
    runs: dict[str, list[dict]] = {e: [] for e in ENCODINGS}
    for fold in folds:
        runs["fgfv"].append(run_fold(config, data, out, fold, n_folds, f"{stem}-fgfv", extra, split))
        fgfv_run = out / f"{stem}-fgfv" / (f"fold{fold}" if fold is not None else "official")
        fisher = RunDir(fgfv_run).read_config().get("features", {}).get("fisher", {})
        crossfit = fisher.get("weight_cases") == "crossfit"  # the config's, or --set's
        cnn = fgfv_run if crossfit else fgfv_run / "model.safetensors"  # crossfit reads the run's k CNNs
        for encoding in ("ifv", "fv"):
            runs[encoding].append(run_fold(config, data, out, fold, n_folds, f"{stem}-{encoding}",
                                           (*extra, f"features.fisher.encoding={encoding}",
                                            f"features.fisher.cnn_weights={cnn}"), split))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = ROOT.parent / "shared" / "datasets"
    parser.add_argument("--ph2", type=Path, default=shared / "ph2")
    parser.add_argument("--isic", type=Path, default=shared / "isic2017")
    parser.add_argument("--dermamnist", type=Path, default=shared / "dermamnist")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_runs" / "fisher_cv")
    parser.add_argument("--isic-size", type=int, default=64)
    parser.add_argument("--isic-epochs", type=int, default=15)
    for name in ("ph2", "isic", "dermamnist"):
        parser.add_argument(f"--skip-{name}", action="store_true")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every run")
    args = parser.parse_args()
    overrides = tuple(args.overrides)
    sections, timings = [], {}
    if args.ph2.exists() and not args.skip_ph2:
        runs = compare("configs/ph2_fgfv.yaml", args.ph2, args.out, list(range(5)), 5, "heldout", overrides)
        rows = {}
        for e in ENCODINGS:
            both = [at_thresholds(r, args.out / f"ph2_fgfv-{e}" / f"fold{k}", args.ph2) for k, r in enumerate(runs[e])]
            rows[f"{e} (ph2_fgfv), threshold chosen on validation"] = summarize_repeats([c for c, _ in both])
            rows[f"{e} (ph2_fgfv), threshold 0.5"] = summarize_repeats([f for _, f in both])
        sections.append(("PH2 melanoma vs nevus, held-out folds (mean ± std over 5 folds):",
                         format_table(rows, ["AUC", "ACC", "SEN", "SPE", "threshold"], style="markdown")))
        timings.update({f"ph2 {e}": runs[e] for e in ENCODINGS})
    if args.isic.exists() and not args.skip_isic:
        extra = (f"data.image_size=[{args.isic_size},{args.isic_size}]", f"train.epochs={args.isic_epochs}", *overrides)
        runs = compare("configs/isic2017_fgfv.yaml", args.isic, args.out, [None], 1, "val", extra)
        columns = ["melanoma AUC", "seborrheic_keratosis AUC", "mean AUC"]
        rows = {f"{e} (isic2017_fgfv, {args.isic_size} px)": runs[e][0]["metrics"] for e in ENCODINGS}
        sections.append(("ISIC-2017 validation set (150 images), one-vs-rest AUC from one 3-class model:",
                         format_table(rows, columns, style="markdown")))
        timings.update({f"isic {e}": runs[e] for e in ENCODINGS})
    if args.dermamnist.exists() and not args.skip_dermamnist:
        runs = compare("configs/dermamnist_fgfv.yaml", args.dermamnist, args.out, [None], 1, "val", overrides)
        rows = {f"{e} (dermamnist_fgfv)": runs[e][0]["metrics"] for e in ENCODINGS}
        sections.append(("DermaMNIST validation set (1003 images, 7 classes), macro one-vs-rest AUC, accuracy "
                         "and balanced accuracy:", format_table(rows, ["AUC", "ACC", "BMA"], style="markdown")))
        timings.update({f"dermamnist {e}": runs[e] for e in ENCODINGS})
    args.out.mkdir(parents=True, exist_ok=True)
    write_summary(args.out, sections, timings)


if __name__ == "__main__":
    main()

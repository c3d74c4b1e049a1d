"""Semi-supervised MV-KBC against supervised MV-KBC at the same labelled fraction (issue 20), on the
10 patient-grouped folds of the LIDC benchmark (benchmarks/lidc_cv.py's folds: recipe ``semi`` splits
validation and held-out folds off the labelled cases exactly as ``mvkbc`` does).

For each labelled fraction f (of each class's training patients; the rest are unlabelled training
data) and each algorithm (configs/lidc_voi_semi_<algorithm>.yaml): held-out ACC / SEN / SPE / AUC
mean ± std over the folds, and per fold the AUC gain over ``supervised`` at the same fraction.
Every run at fraction f takes as many optimiser steps as the supervised run with all labels: an
epoch is one pass over the labelled nodules, so ``train.epochs`` and the early-stopping patience
are scaled by 1 / f.

    python -m benchmarks.label_fraction --fractions 0.1 0.25 0.5 1 --folds 0 1 2 3 4 5 6 7 8 9
    python -m benchmarks.label_fraction --fractions 0.25 --algorithms fixmatch --folds 0   # one run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.cv_common import ROOT, run_fold, write_summary
from medsight.config import raw_config
from medsight.metrics import summarize_repeats
from medsight.report import format_table

FOLDS = 10  # benchmarks/lidc_cv.py's
ALGORITHMS = ("supervised", "mean_teacher", "fixmatch", "ssac", "aae", "catgan", "ladder")
METRICS = ["ACC", "SEN", "SPE", "AUC"]


def scaled(config: str, fraction: float) -> tuple[str, ...]:
    """The overrides of one run at ``fraction``: the fraction, epochs and patience times 1 / fraction."""
    train = raw_config(ROOT / config).get("train", {})
    out = [f"data.labelled_fraction={fraction}", f"train.epochs={round(train.get('epochs', 20) / fraction)}"]
    if train.get("early_stopping"):
        out.append(f"train.early_stopping.patience={round(train['early_stopping']['patience'] / fraction)}")
    return tuple(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "lidc_vois")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_runs" / "label_fraction")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0])
    parser.add_argument("--algorithms", nargs="+", choices=ALGORITHMS, default=list(ALGORITHMS))
    parser.add_argument("--folds", type=int, nargs="+", default=list(range(FOLDS)), metavar="K")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key in every run")
    parser.add_argument("--device", default="cpu", help="where the runs train (cpu, cuda)")
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"{args.data}: the LIDC VOIs were not found; pass --data")
    rows, gains, timings = {}, {}, {}
    for fraction in args.fractions:
        results = {}
        for algorithm in args.algorithms:
            config = f"configs/lidc_voi_semi_{algorithm}.yaml"
            name = f"{algorithm}_{round(fraction * 100)}"
            results[algorithm] = [run_fold(config, args.data, args.out, k, FOLDS, name=name, device=args.device,
                                           overrides=scaled(config, fraction) + tuple(args.overrides))
                                  for k in args.folds]
            timings[name] = results[algorithm]
            rows[f"{algorithm}, {fraction:.0%} labelled"] = summarize_repeats([r["metrics"]
                                                                               for r in results[algorithm]])
        if "supervised" in results:
            for algorithm in [a for a in results if a != "supervised"]:
                gains[f"{algorithm}, {fraction:.0%} labelled"] = summarize_repeats(
                    [{"AUC - supervised AUC": r["metrics"]["AUC"] - s["metrics"]["AUC"]}
                     for r, s in zip(results[algorithm], results["supervised"])])
    sections = [(f"Benign vs malignant LIDC nodules, held-out folds {args.folds} of {FOLDS} (mean ± std), "
                 "threshold chosen on validation:", format_table(rows, METRICS, style="markdown"))]
    if gains:
        sections.append(("Per-fold held-out AUC gain over supervised MV-KBC at the same fraction:",
                         format_table(gains, ["AUC - supervised AUC"], style="markdown")))
    write_summary(args.out, sections, timings, device=args.device.upper())


if __name__ == "__main__":
    main()

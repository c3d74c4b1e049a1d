"""Semi-supervised MV-KBC against supervised MV-KBC at the same labelled fraction (issue 20), on the
10 patient-grouped folds of the LIDC benchmark (benchmarks/lidc_cv.py's folds: recipe ``semi`` splits
validation and held-out folds off the labelled cases exactly as ``mvkbc`` does).

For each labelled fraction f (of each class's training patients; the rest are unlabelled training
data) and each algorithm (configs/lidc_voi_semi_<algorithm>.yaml): held-out ACC / SEN / SPE / AUC
mean ± std over the folds, and per fold the AUC gain over ``supervised`` at the same fraction.
The peer is logistic regression on the nodule's log diameter fit on the same labelled nodules as
the fold's ``supervised`` run (its ``split.json``), scored on the same held-out fold. A plot of
held-out AUC against the labelled fraction, one line per method (``--plot``, default
``<out>/label_fraction.png``).
Every run at fraction f takes as many optimiser steps as the supervised run with all labels: an
epoch is one pass over the labelled nodules, so ``train.epochs`` and the early-stopping patience
are scaled by 1 / f.

    python -m benchmarks.label_fraction --fractions 0.1 0.25 0.5 1 --folds 0 1 2 3 4 5 6 7 8 9
    python -m benchmarks.label_fraction --fractions 0.25 --algorithms fixmatch --folds 0   # one run

``--set train.epochs=E --set train.early_stopping.patience=P`` fixes the epochs of every run instead
(later overrides win), for CPU-sized grids. ``--finished-only`` trains nothing and summarises the
runs already scored, e.g. a grid run in parts or cut off by a time limit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import json

import numpy as np

from benchmarks.cv_common import ROOT, run_fold, write_summary
from benchmarks.lidc_cv import diameter_scores
from medsight.config import raw_config
from medsight.data import open_dataset
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


def diameter_at(dataset, run_dir: Path) -> dict:
    """The diameter peer of one run: fit on the run's labelled training nodules, scored on its held-out ones."""
    split = json.loads((run_dir / "split.json").read_text())
    position = {s.id: i for i, s in enumerate(dataset.samples)}
    train, test = (np.array([position[i] for i in split[name]]) for name in ("train", "heldout"))
    return diameter_scores(dataset, train, test)[0]


def plot_auc(curves: dict[str, dict[float, dict]], path: Path, folds: list[int]) -> None:
    """Held-out AUC (mean ± std over the folds) against the labelled fraction, one line per method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, points) in enumerate(curves.items()):
        fractions = sorted(points)
        nudge = 1 + 0.025 * (i - (len(curves) - 1) / 2)  # side by side, so that the error bars stay apart
        ax.errorbar([100 * f * nudge for f in fractions], [100 * points[f]["AUC"]["mean"] for f in fractions],
                    yerr=[100 * points[f]["AUC"]["std"] for f in fractions], marker="o", capsize=3, label=name,
                    linestyle="--" if name.startswith("diameter") else "-")
    ax.set(xlabel="labelled training patients (%)", ylabel="held-out AUC (%)", xscale="log",
           title=f"LIDC benign vs malignant, folds {folds}")
    ax.set_xticks([10, 25, 50, 100], labels=["10", "25", "50", "100"])
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    parser.add_argument("--plot", type=Path, help="the AUC plot's PNG (default: <out>/label_fraction.png)")
    parser.add_argument("--finished-only", action="store_true",
                        help="train nothing: summarise the runs already scored (each row says on how many folds; "
                             "the per-fold differences use the folds both runs have)")
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"{args.data}: the LIDC VOIs were not found; pass --data")
    dataset = open_dataset(args.data, format="lidc-voi")
    rows, gains, over_peer, timings, curves = {}, {}, {}, {}, {}
    for fraction in args.fractions:
        results = {}  # algorithm -> {fold: result}
        for algorithm in args.algorithms:
            config = f"configs/lidc_voi_semi_{algorithm}.yaml"
            name = f"{algorithm}_{round(fraction * 100)}"
            folds = [k for k in args.folds
                     if not args.finished_only or (args.out / name / f"fold{k}" / "heldout.json").is_file()]
            if not folds:
                continue
            results[algorithm] = {k: run_fold(config, args.data, args.out, k, FOLDS, name=name, device=args.device,
                                              overrides=scaled(config, fraction) + tuple(args.overrides))
                                  for k in folds}
            timings[name] = list(results[algorithm].values())
            label = f"{algorithm}, {fraction:.0%} labelled" + (f" ({len(folds)} folds)" if args.finished_only else "")
            rows[label] = summary = summarize_repeats([r["metrics"] for r in results[algorithm].values()])
            curves.setdefault(algorithm, {})[fraction] = summary
        if "supervised" not in results:
            continue
        supervised = results["supervised"]
        peers = {k: diameter_at(dataset, args.out / f"supervised_{round(fraction * 100)}" / f"fold{k}")
                 for k in supervised}
        rows[f"diameter_mm + LR (peer), {fraction:.0%} labelled"] = peer = summarize_repeats(list(peers.values()))
        curves.setdefault("diameter_mm + LR (peer)", {})[fraction] = peer
        for algorithm, runs in results.items():  # per fold, on the folds both have
            over_peer[f"{algorithm}, {fraction:.0%} labelled"] = summarize_repeats(
                [{"AUC - peer AUC": r["metrics"]["AUC"] - peers[k]["AUC"]} for k, r in runs.items() if k in peers])
            if algorithm != "supervised":
                gains[f"{algorithm}, {fraction:.0%} labelled"] = summarize_repeats(
                    [{"AUC - supervised AUC": r["metrics"]["AUC"] - supervised[k]["metrics"]["AUC"]}
                     for k, r in runs.items() if k in supervised])
    which = " (each row on those of them it has finished)" if args.finished_only else ""
    sections = [(f"Benign vs malignant LIDC nodules, held-out folds {args.folds} of {FOLDS}{which} (mean ± std), "
                 "threshold chosen on validation:", format_table(rows, METRICS, style="markdown"))]
    if gains:
        sections.append(("Per-fold held-out AUC gain over supervised MV-KBC at the same fraction:",
                         format_table(gains, ["AUC - supervised AUC"], style="markdown")))
    if over_peer:
        sections.append(("Per-fold held-out AUC minus the diameter peer's (fit on the same labelled nodules):",
                         format_table(over_peer, ["AUC - peer AUC"], style="markdown")))
    write_summary(args.out, sections, timings, device=args.device.upper())
    plot = args.plot or args.out / "label_fraction.png"
    plot_auc(curves, plot, args.folds)
    print(f"plot: {plot}")


if __name__ == "__main__":
    main()

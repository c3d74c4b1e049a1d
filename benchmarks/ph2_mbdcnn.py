"""MB-DCNN on PH2's 5-fold patient split, against the plain U-Net and ResNet in the same run.

For each fold k (the split of ``benchmarks.ph2_cv``: ``--set data.folds=5 --set data.fold=k``,
validation carved from the other four folds) the benchmark trains, through the CLI, and scores on
the held-out fold with ``medsight evaluate RUN PH2 --split heldout``:

- ``ph2_unet`` and ``ph2_resnet``: the baselines (segmentation; melanoma vs nevus);
- ``ph2_mbdcnn``: the whole method; its evaluation gives coarse-SN's masks (``coarse JA`` ...),
  enhanced-SN's (``JA`` ...) and mask-CN's melanoma scores;
- ``ph2_mbdcnn_nomask``: the ablation, mask-CN on RGB alone (``maskcn.mask_channel=false``), with
  the same fold's coarse-SN read from the fold's ``ph2_mbdcnn`` run and no enhanced-SN, so only
  mask-CN trains;
- with ``--mask-fractions``: ``ph2_mbdcnn`` again with ``data.mask_fraction`` (the segmenters see
  that fraction of the training and validation masks; mask-CN every label): the talk's curve.

Segmentation: JA DI AC SE SP per image, averaged per fold. Classification: AUC ACC SEN SPE at the
threshold each run chose on its validation cases (``predict.decision``) and at 0.5.
Finished folds are reused when re-run.

    python -m benchmarks.ph2_mbdcnn --data ../shared/datasets/ph2 --out bench_runs/ph2_mbdcnn [--folds 0 1 2 3 4]
        [--mask-fractions 0.25 0.5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.cv_common import ROOT, run_fold, write_summary
from medsight.metrics import summarize_repeats
from medsight.report import format_table

FOLDS = 5
SEG, CLS = ("JA", "DI", "AC", "SE", "SP"), ("AUC", "ACC", "SEN", "SPE")


def fold_results(data: Path, out: Path, fold: int, fractions: list[float]) -> dict[str, dict]:
    """The runs of one fold, trained (unless finished) and scored on the held-out fold."""
    full = run_fold("configs/ph2_mbdcnn.yaml", data, out, fold, FOLDS)
    coarse_run = out / "ph2_mbdcnn" / f"fold{fold}"
    nomask = run_fold("configs/ph2_mbdcnn.yaml", data, out, fold, FOLDS, name="ph2_mbdcnn_nomask",
                      overrides=("maskcn.mask_channel=false", f"coarse.trained={coarse_run.resolve()}",
                                 "enhanced.enabled=false"))
    partial = {f"masks{round(100 * f)}": run_fold("configs/ph2_mbdcnn.yaml", data, out, fold, FOLDS,
                                                    name=f"ph2_mbdcnn_masks{round(100 * f)}",
                                                    overrides=(f"data.mask_fraction={f}",)) for f in fractions}
    return {"unet": run_fold("configs/ph2_unet.yaml", data, out, fold, FOLDS),
            "resnet": run_fold("configs/ph2_resnet.yaml", data, out, fold, FOLDS),
            "mbdcnn": full, "nomask": nomask, **partial}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "ph2")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_runs" / "ph2_mbdcnn")
    parser.add_argument("--folds", type=int, nargs="+", default=list(range(FOLDS)))
    parser.add_argument("--mask-fractions", type=float, nargs="*", default=[])
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"{args.data}: PH2 not found; pass --data")
    runs = [fold_results(args.data, args.out, k, args.mask_fractions) for k in args.folds]
    metrics = lambda name, prefix="": summarize_repeats(  # noqa: E731
        [{k: r[name]["metrics"][prefix + k] for k in SEG + CLS if prefix + k in r[name]["metrics"]} for r in runs])
    seg_rows = {"U-Net (ph2_unet)": metrics("unet"), "coarse-SN (ph2_mbdcnn)": metrics("mbdcnn", "coarse "),
                "enhanced-SN (ph2_mbdcnn)": metrics("mbdcnn")}
    for f in args.mask_fractions:
        name = f"masks{round(100 * f)}"
        seg_rows[f"coarse-SN, {100 * f:g} % of the masks"] = metrics(name, "coarse ")
        seg_rows[f"enhanced-SN, {100 * f:g} % of the masks"] = metrics(name)
    fixed = lambda name: summarize_repeats(  # noqa: E731
        [{k: r[name]["fixed_threshold_metrics"][k] for k in CLS} for r in runs])
    cls_rows = {}
    for label, name in (("ResNet-18 (ph2_resnet)", "resnet"), ("mask-CN without mask", "nomask"),
                        ("mask-CN (ph2_mbdcnn)", "mbdcnn")):
        cls_rows[f"{label}, threshold chosen on validation"] = metrics(name)
        cls_rows[f"{label}, threshold 0.5"] = fixed(name)
    folds = ", ".join(map(str, args.folds))
    write_summary(args.out, [
        (f"Segmentation, held-out fold(s) {folds} (per-image mean; mean ± std over folds):",
         format_table(seg_rows, list(SEG), style="markdown")),
        (f"Melanoma vs nevus, held-out fold(s) {folds} (the threshold each run chose on its validation cases, and 0.5):",
         format_table(cls_rows, list(CLS), style="markdown")),
    ], {name: [r[name] for r in runs] for name in runs[0]})


if __name__ == "__main__":
    main()

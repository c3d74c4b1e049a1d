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
Finished folds are reused when re-run. ``--config`` picks another MB-DCNN config (its runs are named
after it, e.g. ``configs/ph2_mbdcnn_paper.yaml``: the paper's size, for a GPU), ``--set`` adds
overrides to its runs (not to the peers'), ``--no-ablation`` leaves the mask-CN ablation out and
``--device`` trains and scores every run there.

    python -m benchmarks.ph2_mbdcnn --data ../shared/datasets/ph2 --out bench_runs/ph2_mbdcnn [--folds 0 1 2 3 4]
        [--mask-fractions 0.25 0.5] [--config configs/ph2_mbdcnn_paper.yaml --device cuda --no-ablation]
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


def fold_results(data: Path, out: Path, fold: int, fractions: list[float], config: str = "configs/ph2_mbdcnn.yaml",
                 overrides: tuple[str, ...] = (), ablation: bool = True, device: str = "cpu") -> dict[str, dict]:
    """The runs of one fold, trained (unless finished) and scored on the held-out fold."""
    stem = Path(config).stem
    full = run_fold(config, data, out, fold, FOLDS, overrides=overrides, device=device)
    coarse_run = out / stem / f"fold{fold}"
    nomask = {"nomask": run_fold(config, data, out, fold, FOLDS, name=f"{stem}_nomask", device=device,
                                 overrides=(*overrides, "maskcn.mask_channel=false",
                                            f"coarse.trained={coarse_run.resolve()}", "enhanced.enabled=false"))
              } if ablation else {}
    partial = {f"masks{round(100 * f)}": run_fold(config, data, out, fold, FOLDS, name=f"{stem}_masks{round(100 * f)}",
                                                    overrides=(*overrides, f"data.mask_fraction={f}"), device=device)
               for f in fractions}
    return {"unet": run_fold("configs/ph2_unet.yaml", data, out, fold, FOLDS, device=device),
            "resnet": run_fold("configs/ph2_resnet.yaml", data, out, fold, FOLDS, device=device),
            "mbdcnn": full, **nomask, **partial}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "ph2")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_runs" / "ph2_mbdcnn")
    parser.add_argument("--folds", type=int, nargs="+", default=list(range(FOLDS)))
    parser.add_argument("--mask-fractions", type=float, nargs="*", default=[])
    parser.add_argument("--config", default="configs/ph2_mbdcnn.yaml", help="the MB-DCNN config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="for the MB-DCNN runs")
    parser.add_argument("--ablation", action=argparse.BooleanOptionalAction, default=True,
                        help="mask-CN without the mask (default on)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"{args.data}: PH2 not found; pass --data")
    runs = [fold_results(args.data, args.out, k, args.mask_fractions, args.config, tuple(args.set), args.ablation,
                         args.device) for k in args.folds]
    stem = Path(args.config).stem
    metrics = lambda name, prefix="": summarize_repeats(  # noqa: E731
        [{k: r[name]["metrics"][prefix + k] for k in SEG + CLS if prefix + k in r[name]["metrics"]} for r in runs])
    seg_rows = {"U-Net (ph2_unet)": metrics("unet"), f"coarse-SN ({stem})": metrics("mbdcnn", "coarse "),
                f"enhanced-SN ({stem})": metrics("mbdcnn")}
    for f in args.mask_fractions:
        name = f"masks{round(100 * f)}"
        seg_rows[f"coarse-SN, {100 * f:g} % of the masks"] = metrics(name, "coarse ")
        seg_rows[f"enhanced-SN, {100 * f:g} % of the masks"] = metrics(name)
    fixed = lambda name: summarize_repeats(  # noqa: E731
        [{k: r[name]["fixed_threshold_metrics"][k] for k in CLS} for r in runs])
    cls_rows = {}
    for label, name in (("ResNet-18 (ph2_resnet)", "resnet"), ("mask-CN without mask", "nomask"),
                        (f"mask-CN ({stem})", "mbdcnn")):
        if name != "nomask" or args.ablation:
            cls_rows[f"{label}, threshold chosen on validation"] = metrics(name)
            cls_rows[f"{label}, threshold 0.5"] = fixed(name)
    folds = ", ".join(map(str, args.folds))
    write_summary(args.out, [
        (f"Segmentation, held-out fold(s) {folds} (per-image mean; mean ± std over folds):",
         format_table(seg_rows, list(SEG), style="markdown")),
        (f"Melanoma vs nevus, held-out fold(s) {folds} (the threshold each run chose on its validation cases, and 0.5):",
         format_table(cls_rows, list(CLS), style="markdown")),
    ], {name: [r[name] for r in runs] for name in runs[0]}, device=args.device.upper())


if __name__ == "__main__":
    main()

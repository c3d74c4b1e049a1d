"""10-fold patient-level cross-validation of the nodule recipes on the shared LIDC VOIs, next to
logistic regression on the nodule diameter alone (the bar an image recipe must clear).

Each fold k: ``medsight train configs/<config>.yaml --set data.folds=10 --set data.fold=k``, then
``medsight evaluate RUN VOIS --split heldout``, for the image baselines (resnet3d, multiview), the
talk's descriptor baselines (3D GLCM + SVM, multi-view features + SVM) and Fuse-TSD. The diameter peer is
fitted on the same training folds and scored on the same held-out fold. Finished folds are reused.
Besides the metrics at the fixed threshold 0.5: the same held-out metrics at the threshold each
fold run chooses on its own validation cases (Youden's J; ``--chosen-threshold``), and the per-fold
AUC difference against the diameter peer (mean ± std over folds).

    python -m benchmarks.lidc_cv --data ../shared/datasets/lidc_vois --out bench_runs/lidc_cv
    python -m benchmarks.lidc_cv --configs configs/lidc_voi_mvkbc.yaml --name mvkbc_oa_only \
        --set "data.preprocess_options.patches=[OA]"        # an ablation: its own run folder
    python -m benchmarks.lidc_cv --ablations --out bench_runs/lidc_cv_mvkbc   # MV-KBC's ablations (issue 19)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from benchmarks.cv_common import ROOT, folds_of, run_fold, threshold_metrics, write_summary
from medsight.data import open_dataset
from medsight.metrics import binary_metrics, summarize_repeats
from medsight.report import format_table

FOLDS = 10
CONFIGS = ("configs/lidc_voi_resnet3d.yaml", "configs/lidc_voi_multiview.yaml", "configs/lidc_voi_glcm3d_svm.yaml",
           "configs/lidc_voi_multiview_svm.yaml", "configs/lidc_voi_fuse_tsd.yaml")
METRICS = ["ACC", "SEN", "SPE", "AUC"]
MVKBC = "configs/lidc_voi_mvkbc.yaml"
# what each part of MV-KBC adds: one part taken away (or the streams unshared) per row
ABLATIONS = {
    "mvkbc_oa_only": ("data.preprocess_options.patches=[OA]",),
    "mvkbc_axial_only": ("data.preprocess_options.views=[axial]",),
    "mvkbc_orthogonal_views": ("data.preprocess_options.views=[axial,coronal,sagittal]",),
    "mvkbc_no_penalty": ("mvkbc.penalty=none",),
    "mvkbc_separate_streams": ("model.options.share_views=false",),
}


def diameter_peer(dataset, folds) -> list[dict]:
    task = dataset.task("malignancy")
    y = np.array([task.label_of(s.diagnosis) for s in dataset.samples])
    x = np.array([[float(s.meta["diameter_mm"])] for s in dataset.samples])
    results = []
    for test in folds:
        train = np.setdiff1d(np.arange(len(y)), test)
        model = LogisticRegression(class_weight="balanced").fit(np.log(x[train]), y[train])
        results.append(binary_metrics(y[test], model.predict_proba(np.log(x[test]))[:, 1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "lidc_vois")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_runs" / "lidc_cv")
    parser.add_argument("--configs", nargs="+", default=CONFIGS, help="configs to cross-validate")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key in every run (with --name for a run folder of its own)")
    parser.add_argument("--name", help="the runs' folder and row name (default: the config's name)")
    parser.add_argument("--ablations", action="store_true",
                        help=f"run {MVKBC} and its ablations ({', '.join(ABLATIONS)}) instead of --configs")
    parser.add_argument("--label-rule", choices=["diagnosis", "malignancy"], default="diagnosis",
                        help="the reader's label rule (malignancy: mean rating < 3 / > 3, 3 left out)")
    parser.add_argument("--chosen-threshold", action="store_true",
                        help="also the metrics at the threshold chosen on each run's validation cases")
    parser.add_argument("--folds", type=int, nargs="+", default=list(range(FOLDS)), metavar="K",
                        help=f"which of the {FOLDS} folds to run (default all; the peer is scored on the same)")
    parser.add_argument("--device", default="cpu", help="where the runs train (cpu, cuda)")
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"{args.data}: the LIDC VOIs were not found; pass --data")
    dataset = open_dataset(args.data, format="lidc-voi", label_rule=args.label_rule)
    overrides = tuple(args.overrides) + ((f"data.options.label_rule={args.label_rule}",)
                                         if args.label_rule != "diagnosis" else ())
    folds = folds_of(dataset.samples, dataset.task("malignancy"), FOLDS)
    peer = diameter_peer(dataset, [folds[k] for k in args.folds])
    rows = {"diameter_mm + LR (peer)": summarize_repeats(peer)}
    chosen, differences, timings = {}, {}, {}
    runs = [(args.name or Path(config).stem, config, overrides) for config in args.configs]
    if args.ablations:
        runs = [(Path(MVKBC).stem, MVKBC, overrides)] + [(name, MVKBC, overrides + extra)
                                                          for name, extra in ABLATIONS.items()]
    for name, config, run_overrides in runs:
        timings[name] = [run_fold(config, args.data, args.out, k, FOLDS, name=name, overrides=run_overrides,
                                  device=args.device) for k in args.folds]
        rows[f"{name} (medsight)"] = summarize_repeats([r["metrics"] for r in timings[name]])
        differences[name] = summarize_repeats([{"AUC - peer AUC": r["metrics"]["AUC"] - p["AUC"]}
                                               for r, p in zip(timings[name], peer)])
        if args.chosen_threshold:
            chosen[f"{name}, threshold chosen on validation"] = summarize_repeats(
                [threshold_metrics(args.out / name / f"fold{k}", args.data) for k in args.folds])
    sections = [(f"Benign vs malignant, {len(dataset)} nodules ({args.label_rule} labels), held-out folds, "
                 f"threshold 0.5 (mean ± std over folds {args.folds} of {FOLDS}):",
                 format_table(rows, METRICS, style="markdown")),
                ("Per-fold held-out AUC minus the diameter peer's on the same fold:",
                 format_table(differences, ["AUC - peer AUC"], style="markdown"))]
    if chosen:
        sections.append(("The same runs at the threshold each chose on its validation cases (Youden's J):",
                         format_table(chosen, [*METRICS, "threshold"], style="markdown")))
    write_summary(args.out, sections, timings, device=args.device.upper())


if __name__ == "__main__":
    main()

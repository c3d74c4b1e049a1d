"""10-fold patient-level cross-validation of the nodule recipes on the shared LIDC VOIs, next to
logistic regression on the nodule diameter alone (the bar an image recipe must clear).

Each fold k: ``medsight train configs/<config>.yaml --set data.folds=10 --set data.fold=k``, then
``medsight evaluate RUN VOIS --split heldout``, for the image baselines (resnet3d, multiview), the
talk's descriptor baselines (3D GLCM + SVM, multi-view features + SVM) and Fuse-TSD. The diameter peer is
fitted on the same training folds and scored on the same held-out fold. Finished folds are reused.
Two rows per recipe: the held-out metrics at the threshold each fold run chose on its own
validation cases (Youden's J, stored in the run; for runs made before thresholds were stored,
chosen here the same way) and at the fixed threshold 0.5; and the per-fold AUC difference against
the diameter peer (mean ± std over folds). The peer is scored the same two ways (its threshold by
Youden's J on its own training folds: one feature, two parameters, nothing to overfit).

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

from benchmarks.cv_common import ROOT, at_thresholds, folds_of, run_fold, write_summary
from medsight.data import open_dataset
from medsight.metrics import binary_metrics, summarize_repeats
from medsight.metrics.thresholds import youden_threshold
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


def diameter_peer(dataset, folds) -> tuple[list[dict], list[dict]]:
    """Per fold: (metrics at the Youden threshold of the training folds, metrics at 0.5)."""
    every = np.arange(len(dataset.samples))
    scores = [diameter_scores(dataset, np.setdiff1d(every, test), test) for test in folds]
    return [chosen for chosen, _ in scores], [fixed for _, fixed in scores]


def diameter_scores(dataset, train: np.ndarray, test: np.ndarray) -> tuple[dict, dict]:
    """Logistic regression on log diameter fit on the ``train`` positions of ``dataset``, scored on
    ``test``: (metrics at the Youden threshold of its training cases, with it, metrics at 0.5)."""
    task = dataset.task("malignancy")
    y = np.array([task.label_of(s.diagnosis) for s in dataset.samples])
    x = np.log(np.array([[float(s.meta["diameter_mm"])] for s in dataset.samples]))
    model = LogisticRegression(class_weight="balanced").fit(x[train], y[train])
    threshold = youden_threshold(y[train], model.predict_proba(x[train])[:, 1])
    score = model.predict_proba(x[test])[:, 1]
    return {**binary_metrics(y[test], score, threshold), "threshold": threshold}, binary_metrics(y[test], score)


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
    parser.add_argument("--chosen-threshold", action="store_true", help=argparse.SUPPRESS)  # now always
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
    peer_chosen, peer = diameter_peer(dataset, [folds[k] for k in args.folds])
    rows = {"diameter_mm + LR (peer), chosen threshold": summarize_repeats(peer_chosen),
            "diameter_mm + LR (peer), threshold 0.5": summarize_repeats(peer)}
    differences, timings = {}, {}
    runs = [(args.name or Path(config).stem, config, overrides) for config in args.configs]
    if args.ablations:
        runs = [(Path(MVKBC).stem, MVKBC, overrides)] + [(name, MVKBC, overrides + extra)
                                                          for name, extra in ABLATIONS.items()]
    for name, config, run_overrides in runs:
        timings[name] = [run_fold(config, args.data, args.out, k, FOLDS, name=name, overrides=run_overrides,
                                  device=args.device) for k in args.folds]
        both = [at_thresholds(r, args.out / name / f"fold{k}", args.data) for k, r in zip(args.folds, timings[name])]
        rows[f"{name}, threshold chosen on validation"] = summarize_repeats([c for c, _ in both])
        rows[f"{name}, threshold 0.5"] = summarize_repeats([f for _, f in both])
        differences[name] = summarize_repeats([{"AUC - peer AUC": r["metrics"]["AUC"] - p["AUC"]}
                                               for r, p in zip(timings[name], peer)])
    title = (f"Benign vs malignant, {len(dataset)} nodules ({args.label_rule} labels), held-out folds "
             f"(mean ± std over folds {args.folds} of {FOLDS}); the threshold each run chose on its "
             "validation cases (Youden's J) and 0.5:")
    sections = [(title,
                 format_table(rows, [*METRICS, "threshold"], style="markdown")),
                ("Per-fold held-out AUC minus the diameter peer's on the same fold:",
                 format_table(differences, ["AUC - peer AUC"], style="markdown"))]
    write_summary(args.out, sections, timings, device=args.device.upper())


if __name__ == "__main__":
    main()

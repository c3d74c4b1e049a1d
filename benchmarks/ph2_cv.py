"""5-fold patient-level cross-validation of the two PH2 baseline recipes, next to classical peers.

For each fold k the recipe is trained with ``medsight train CONFIG --set data.folds=5 --set
data.fold=k`` (validation carved from the other four folds) and scored with ``medsight evaluate
RUN PH2 --split heldout`` on fold k, which it never saw. The peers are scored on the same folds:
Otsu thresholding (largest dark component, holes filled) for segmentation, and logistic regression
on colour histograms for melanoma classification. The classifiers are scored at the threshold each
chose on cases it did not learn from (the recipe: Youden's J on its validation cases, stored in the
run; the peer: Youden's J on 5-fold out-of-fold scores of its training folds) and at 0.5. Finished
folds are reused when re-run.

    python -m benchmarks.ph2_cv --data ../shared/datasets/ph2 --out bench_runs/ph2_cv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from benchmarks.cv_common import ROOT, at_thresholds, folds_of, run_fold, write_summary
from medsight.data import open_dataset
from medsight.metrics import binary_metrics, segmentation_metrics, summarize_repeats
from medsight.metrics.thresholds import youden_threshold
from medsight.report import format_table

FOLDS = 5


def otsu_mask(image: np.ndarray) -> np.ndarray:
    grey = image.astype(float).mean(0)
    mask = grey < threshold_otsu(grey)  # lesions are darker than skin
    labels, n = ndimage.label(mask)
    if n > 1:  # keep the largest component (dark corners of the dermoscope's field are smaller)
        mask = labels == (np.argmax(ndimage.sum(mask, labels, range(1, n + 1))) + 1)
    return ndimage.binary_fill_holes(mask)


def colour_features(image: np.ndarray) -> np.ndarray:
    return np.concatenate([np.histogram(c, bins=16, range=(0, 256), density=True)[0] for c in image]
                          + [image.reshape(3, -1).mean(1) / 255, image.reshape(3, -1).std(1) / 255])


def peers(dataset, folds) -> tuple[list[dict], list[dict], list[dict]]:
    """Per fold: Otsu's segmentation metrics, the colour LR's metrics at its chosen threshold and at 0.5."""
    images = [s.load_image() for s in dataset.samples]
    task = dataset.task("melanoma")
    y = np.array([task.label_of(s.diagnosis) for s in dataset.samples])
    x = np.stack([colour_features(im) for im in images])
    seg, cls, chosen = [], [], []
    for test in folds:
        per_image = [segmentation_metrics(otsu_mask(images[i]), dataset.samples[i].load_mask()) for i in test]
        seg.append({k: v["mean"] for k, v in summarize_repeats(per_image).items()})
        train = np.setdiff1d(np.arange(len(y)), test)
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, class_weight="balanced", max_iter=2000))
        inner = cross_val_predict(model, x[train], y[train], cv=5, method="predict_proba")[:, 1]
        threshold = youden_threshold(y[train], inner)
        model.fit(x[train], y[train])
        score = model.predict_proba(x[test])[:, 1]
        cls.append(binary_metrics(y[test], score))
        chosen.append({**binary_metrics(y[test], score, threshold), "threshold": threshold})
    return seg, cls, chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "ph2")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_runs" / "ph2_cv")
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"{args.data}: PH2 not found; pass --data")
    dataset = open_dataset(args.data, format="ph2")
    otsu, colour_lr, colour_chosen = peers(dataset, folds_of(dataset.samples, dataset.task("melanoma"), FOLDS))
    unet = [run_fold("configs/ph2_unet.yaml", args.data, args.out, k, FOLDS) for k in range(FOLDS)]
    resnet = [run_fold("configs/ph2_resnet.yaml", args.data, args.out, k, FOLDS) for k in range(FOLDS)]

    seg_rows = {"ph2_unet (medsight)": summarize_repeats([r["metrics"] for r in unet]),
                "Otsu threshold (peer)": summarize_repeats(otsu)}
    both = [at_thresholds(r, args.out / "ph2_resnet" / f"fold{k}", args.data) for k, r in enumerate(resnet)]
    cls_rows = {"ph2_resnet (medsight), threshold chosen on validation": summarize_repeats([c for c, _ in both]),
                "ph2_resnet (medsight), threshold 0.5": summarize_repeats([f for _, f in both]),
                "colour histogram + LR (peer), chosen threshold": summarize_repeats(colour_chosen),
                "colour histogram + LR (peer), threshold 0.5": summarize_repeats(colour_lr)}
    write_summary(args.out, [
        ("Segmentation, held-out folds (per-image mean, then mean ± std over 5 folds):",
         format_table(seg_rows, ["JA", "DI", "AC", "SE", "SP"], style="markdown")),
        ("Melanoma vs nevus, held-out folds (mean ± std over 5 folds):",
         format_table(cls_rows, ["AUC", "ACC", "SEN", "SPE", "threshold"], style="markdown")),
    ], {"ph2_unet": unet, "ph2_resnet": resnet})


if __name__ == "__main__":
    main()

"""The nodule segmenter (configs/lidc_voi_nodule_unet.yaml) on held-out LIDC nodules, against two
trivial peers scored on the same nodules, on the same voxels, in the same run.

The folds are lidc_cv's (10 patient-grouped, stratified folds, split_seed 0): each fold k trains
``medsight train configs/lidc_voi_nodule_unet.yaml --set data.folds=10 --set data.fold=k`` (the
epoch chosen on the validation patients carved from the training folds) and scores the held-out
fold. Every mask is scored per nodule on the CT's own voxels against the VOI's mask (Dice), and the
box or sphere of every method is centred where the segmenter's is (the mask's centroid, as the
LUNA16 / Tianchi centre is the readers' mean centroid):

- ``unet``: the segmenter's probabilities interpolated back onto the VOI grid, >= 0.5;
- ``sphere_hu``: the voxels above an HU threshold inside the ball of the nodule's annotated
  diameter (the CSV's ``diameter_mm``, which LUNA16 / Tianchi also give); the threshold (from
  -1000 to 0 HU in steps of 100) is the one with the best mean Dice on the fold's training nodules;
- ``otsu``: Otsu's threshold on the HU of the segmenter's 32 mm box (on the VOI's voxels), the
  connected component at the centre (the foreground voxel nearest it).

Also the per-nodule Dice difference unet - peer (mean ± std) and how often the U-Net wins.

    OMP_NUM_THREADS=1 python -m benchmarks.nodule_seg --folds 0 1 --out bench_runs/nodule_seg
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from benchmarks.cv_common import ROOT, folds_of, run_fold
from medsight.data import open_dataset
from medsight.metrics import segmentation_metrics, summarize_repeats
from medsight.recipes import load_recipe
from medsight.report import format_table
from medsight.rundir import RunDir
from medsight.transforms.volume import crop_centered, mask_centre

CONFIG = "configs/lidc_voi_nodule_unet.yaml"
FOLDS = 10
HU_GRID = tuple(range(-1000, 1, 100))


def ball(shape, centre, radius_mm: float, spacing) -> np.ndarray:
    grids = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(shape, centre, spacing)], indexing="ij")
    return sum(g ** 2 for g in grids) <= radius_mm ** 2


def sphere_hu(volume, centre, diameter_mm: float, spacing, hu: float) -> np.ndarray:
    return ball(volume.shape, centre, diameter_mm / 2, spacing) & (volume >= hu)


def otsu_at_centre(volume, centre, spacing, size_mm) -> np.ndarray:
    """Otsu's threshold on the box's voxels; the component at (or nearest) the centre."""
    box = crop_centered(volume, centre, size_mm, spacing)  # the native voxels of the box, for the threshold
    fg = volume >= threshold_otsu(box.astype(np.float32))
    in_box = np.abs(np.indices(volume.shape) - np.asarray(centre)[:, None, None, None]) \
        <= (np.asarray(size_mm) / 2 / np.asarray(spacing))[:, None, None, None]
    fg &= in_box.all(0)
    labels, n = ndi.label(fg)
    if n == 0:
        return fg
    points = np.argwhere(fg)
    nearest = points[np.argmin((((points - centre) * spacing) ** 2).sum(1))]
    return labels == labels[tuple(nearest)]


def dice(pred, truth) -> float:
    return segmentation_metrics(pred, truth > 0)["DI"]


def nodules(dataset, ids):
    by_id = {s.id: s for s in dataset.samples}
    for cid in ids:
        s = by_id[cid]
        volume, truth = s.load_image()[0].astype(np.float32), s.load_mask()
        yield cid, s, volume, truth, mask_centre(truth)


def best_hu(dataset, ids) -> float:
    """The HU threshold with the best mean Dice of ``sphere_hu`` over the nodules ``ids``."""
    scores = np.zeros(len(HU_GRID))
    for _, s, volume, truth, centre in nodules(dataset, ids):
        d = float(s.meta["diameter_mm"])
        scores += [dice(sphere_hu(volume, centre, d, s.spacing, hu), truth) for hu in HU_GRID]
    return float(HU_GRID[int(np.argmax(scores))])


def score_fold(run_dir: Path, data: Path, dataset) -> tuple[dict[str, list[float]], float]:
    """Per held-out nodule, the Dice of the U-Net and the peers; and the peers' HU threshold."""
    run = RunDir(run_dir)
    recipe = load_recipe(run_dir, device="cpu")
    heldout = run.split_ids("heldout")
    hu = best_hu(dataset, run.split_ids("train"))
    subset = dataclasses.replace(dataset, samples=[s for s in dataset.samples if s.id in set(heldout)])
    preds = recipe.predict(subset)
    unet = dict(recipe.full_size_masks(preds))
    size_mm = recipe.cfg.data.preprocess_options["size_mm"]
    out: dict[str, list[float]] = {"unet": [], "sphere_hu": [], "otsu": []}
    for cid, s, volume, truth, centre in nodules(dataset, heldout):
        out["unet"].append(dice(unet[cid], truth))
        out["sphere_hu"].append(dice(sphere_hu(volume, centre, float(s.meta["diameter_mm"]), s.spacing, hu), truth))
        out["otsu"].append(dice(otsu_at_centre(volume, centre, s.spacing, size_mm), truth))
    return out, hu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "lidc_vois")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_runs" / "nodule_seg")
    parser.add_argument("--folds", type=int, nargs="+", default=list(range(FOLDS)), metavar="K")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    dataset = open_dataset(args.data, format="lidc-voi")
    folds = folds_of(dataset.samples, dataset.task("malignancy"), FOLDS)
    rows, pooled, times = {}, {"unet": [], "sphere_hu": [], "otsu": []}, []
    for k in args.folds:
        result = run_fold(CONFIG, args.data, args.out, k, FOLDS, overrides=tuple(args.overrides))
        run_dir = args.out / Path(CONFIG).stem / f"fold{k}"
        want = sorted(dataset.samples[i].id for i in folds[k])
        assert sorted(RunDir(run_dir).split_ids("heldout")) == want, "not lidc_cv's held-out fold"
        scores, hu = score_fold(run_dir, args.data, dataset)
        times.append(f"fold {k}: {result['train_seconds']} s, {result['epochs_run']} epochs; sphere_hu threshold {hu:g} HU")
        for name, values in scores.items():
            pooled[name].extend(values)
            rows[f"fold {k} {name} (n={len(values)})"] = summarize_repeats([{"DI": v} for v in values])
        for peer in ("sphere_hu", "otsu"):
            diff = np.subtract(scores["unet"], scores[peer])
            rows[f"fold {k} unet - {peer}"] = summarize_repeats([{"DI": v} for v in diff])
    for name, values in pooled.items():
        rows[f"all {name} (n={len(values)})"] = summarize_repeats([{"DI": v} for v in values])
    for peer in ("sphere_hu", "otsu"):
        diff = np.subtract(pooled["unet"], pooled[peer])
        rows[f"all unet - {peer}, unet better on {np.mean(diff > 0):.0%}"] = summarize_repeats([{"DI": v} for v in diff])
    text = "Dice per held-out nodule, mean ± std over nodules (%):\n\n" + \
        format_table(rows, ["DI"], style="markdown") + "\n\n" + "\n".join(times)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.md").write_text(text + "\n")


if __name__ == "__main__":
    main()

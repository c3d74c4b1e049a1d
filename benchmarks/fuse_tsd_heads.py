"""Fuse-TSD's heads re-fitted with other settings on the descriptors of finished cross-validation folds.

For each fold run of ``python -m benchmarks.lidc_cv`` (``bench_runs/lidc_cv/lidc_voi_fuse_tsd/fold<k>``) the
run is loaded (its slice CNN), its train / validation / held-out cases are read back from
``split.json`` and described once (GLCM, Fourier shape, CNN; cached as ``descriptors.npz`` in the
fold folder); then every head setting below is fitted on the training descriptors. The table gives,
as the mean over folds, the inner-validation AUC (the one to choose a setting by) and the held-out
AUC of the fused decision, and each descriptor's held-out AUC alone. The ``config`` row refits the config's own heads and must reproduce the fold runs.

    python -m benchmarks.fuse_tsd_heads --runs bench_runs/lidc_cv/lidc_voi_fuse_tsd --data ../shared/datasets/lidc_vois
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.cv_common import ROOT
from medsight.data import open_dataset
from medsight.features.classifiers import BoostedMLP, SVMHead
from medsight.metrics import binary_metrics, summarize_repeats
from medsight.report import format_table
from medsight.recipes import load_recipe
from medsight.recipes.common import preprocessor
from medsight.recipes.heads import describe
from medsight.recipes.prepare import load_samples
from medsight.rundir import RunDir

DESCRIPTORS = ("glcm", "fourier", "cnn")
HEADS = {  # name -> a new head; "config" is lidc_voi_fuse_tsd.yaml's
    "config": lambda: BoostedMLP(n_estimators=10, hidden=32, steps=300),
    "boosted, 50 steps": lambda: BoostedMLP(n_estimators=10, hidden=32, steps=50),
    "boosted, 100 steps, weight decay 1e-2": lambda: BoostedMLP(n_estimators=10, hidden=32, steps=100,
                                                                weight_decay=1e-2),
    "boosted, 8 hidden, 100 steps": lambda: BoostedMLP(n_estimators=10, hidden=8, steps=100),
    "boosted, 30 steps, lr 3e-3": lambda: BoostedMLP(n_estimators=10, hidden=32, steps=30, lr=3e-3),
    "RBF SVM (not Fuse-TSD)": lambda: SVMHead(),
}


def described(run_dir: Path, data: Path) -> dict[str, np.ndarray]:
    """{part_descriptor: (n, d), part_y: (n,)} for part in train, val, heldout, cached in the run folder."""
    cache = run_dir / "descriptors.npz"
    if cache.is_file():
        return dict(np.load(cache))
    recipe = load_recipe(run_dir, device="cpu")
    dataset = open_dataset(data, format=recipe.cfg.data.format)
    task = dataset.task(recipe.cfg.data.task)
    by_id = {s.id: s for s in dataset.samples}
    arrays = {}
    for part in ("train", "val", "heldout"):
        cases = [by_id[i] for i in RunDir(run_dir).split_ids(part)]
        loaded, _ = load_samples(cases, preprocessor(recipe.cfg, None), task, need_masks=True)
        arrays.update({f"{part}_{name}": X for name, X in describe(loaded, recipe.descriptors())[0].items()})
        arrays[f"{part}_y"] = loaded.labels.numpy()
    np.savez(cache, **arrays)
    return arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "bench_runs" / "lidc_cv" / "lidc_voi_fuse_tsd")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "lidc_vois")
    args = parser.parse_args()
    folds = sorted(p for p in args.runs.glob("fold*") if (p / "heldout.json").is_file())
    if not folds:
        raise SystemExit(f"{args.runs}: no finished fold runs; run python -m benchmarks.lidc_cv first")
    scores: dict[str, list[dict]] = {name: [] for name in HEADS}
    for run_dir in folds:
        a = described(run_dir, args.data)
        for name, new_head in HEADS.items():
            val, held, row = [], [], {}
            for d in DESCRIPTORS:
                head = new_head().fit(a[f"train_{d}"], a["train_y"])
                val.append(head.predict_proba(a[f"val_{d}"])[:, 1])
                held.append(head.predict_proba(a[f"heldout_{d}"])[:, 1])
                row[f"{d} AUC"] = binary_metrics(a["heldout_y"], held[-1])["AUC"]
            row["validation AUC"] = binary_metrics(a["val_y"], np.mean(val, 0))["AUC"]
            row["held-out AUC"] = binary_metrics(a["heldout_y"], np.mean(held, 0))["AUC"]
            scores[name].append(row)
        print(f"{run_dir.name} done", flush=True)
    print(f"Fuse-TSD heads on {len(folds)} folds (mean ± std), fused by the mean of the three probabilities:\n")
    print(format_table({n: summarize_repeats(r) for n, r in scores.items()},
                       ["validation AUC", "held-out AUC", *(f"{d} AUC" for d in DESCRIPTORS)], style="markdown"))


if __name__ == "__main__":
    main()

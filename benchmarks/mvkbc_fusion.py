"""Does MV-KBC add to the nodule's diameter? A late fusion of the two, fit on cases MV-KBC did not train on.

For each fold run of ``benchmarks.lidc_cv`` (the 10 patient folds), a logistic regression on
(MV-KBC's logit, log diameter) is fit on the run's validation cases (MV-KBC trained on the other
training patients; the validation cases only chose its epoch) and scores the held-out fold. Next to it,
in the same run: MV-KBC alone and the diameter alone (log diameter + LR fit on the training folds, the
``lidc_cv`` peer). Reported: held-out AUC mean ± std over folds, and the per-fold difference
against the diameter peer.

    python -m benchmarks.mvkbc_fusion bench_runs/lidc_cv_mvkbc/lidc_voi_mvkbc
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from benchmarks.cv_common import ROOT, fold_dirs, fold_predictions
from medsight.rundir import RunDir


def fold_aucs(run_dir: Path, data: Path) -> dict[str, float]:
    """Held-out AUC of MV-KBC, of the diameter (fit on the training folds) and of their fusion (fit on validation)."""
    recipe, parts = fold_predictions(run_dir, data)
    samples = recipe_samples(recipe, data)
    diameters = {s.id: float(s.meta["diameter_mm"]) for s in samples}
    features, labels = {}, {}
    for part, (y, preds) in parts.items():
        p = preds.outputs.numpy()[:, 1].clip(1e-6, 1 - 1e-6)
        features[part] = np.column_stack([np.log(p / (1 - p)), np.log([diameters[i] for i in preds.loaded.ids])])
        labels[part] = y
    fusion = make_pipeline(StandardScaler(), LogisticRegression()).fit(features["val"], labels["val"])
    train_ids = set(RunDir(run_dir).split_ids("train"))
    train = [s for s in samples if s.id in train_ids]
    diameter = LogisticRegression().fit(np.log([[diameters[s.id]] for s in train]),
                                        [recipe.record_.task.label_of(s.diagnosis) for s in train])
    y, x = labels["heldout"], features["heldout"]
    return {"MV-KBC": roc_auc_score(y, x[:, 0]),
            "diameter + LR (training folds)": roc_auc_score(y, diameter.decision_function(x[:, 1:])),
            "MV-KBC + diameter, LR fit on validation": roc_auc_score(y, fusion.decision_function(x))}


def recipe_samples(recipe, data: Path):
    from medsight.data import open_dataset

    return open_dataset(data, format=recipe.cfg.data.format, **recipe.cfg.data.options).samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, help="a folder of fold<k> MV-KBC runs")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "lidc_vois")
    args = parser.parse_args()
    folds = fold_dirs(args.runs)
    rows = []
    for run_dir in folds:
        rows.append(fold_aucs(run_dir, args.data))
        print(run_dir.name, "  ".join(f"{k} {v:.4f}" for k, v in rows[-1].items()), flush=True)
    peer = np.array([r["diameter + LR (training folds)"] for r in rows]) * 100
    print(f"\nheld-out AUC over {len(rows)} folds (mean ± std, ddof 1 as lidc_cv), and per fold minus the diameter's:")
    for name in rows[0]:
        auc = np.array([r[name] for r in rows]) * 100
        print(f"| {name} | {auc.mean():.2f} ± {auc.std(ddof=1):.2f} | {np.mean(auc - peer):+.2f} ± {np.std(auc - peer, ddof=1):.2f} |")


if __name__ == "__main__":
    main()

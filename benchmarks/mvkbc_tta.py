"""Does test-time averaging over the 8 rotations and flips of the patches help MV-KBC? Validation and
held-out AUC of the fold runs of ``benchmarks.lidc_cv``, plain and averaged (the mean of the 8 logits).
The decision belongs to the validation column; the held-out one is only read alongside.

    python -m benchmarks.mvkbc_tta bench_runs/lidc_cv_mvkbc/lidc_voi_mvkbc
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from benchmarks.cv_common import ROOT, fold_dirs, fold_predictions
from medsight.recipes.network import eval_batches


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 rotations (k mod 4 quarter turns) and flips (k >= 4) of (B, C, S, S)."""
    x = torch.rot90(x, k % 4, (2, 3))
    return x.flip(3) if k >= 4 else x


def fold_aucs(run_dir: Path, data: Path) -> dict[str, tuple[float, float]]:
    """{part: (plain AUC, averaged AUC)} for the run's validation and held-out cases."""
    recipe, parts = fold_predictions(run_dir, data)
    model = recipe.model_.eval()
    result = {}
    for part, (y, preds) in parts.items():
        logits = []
        with torch.no_grad():
            for k in range(8):
                z = torch.cat([model(dihedral(b["x"], k), recipe.size(b)).float().log_softmax(1)
                               for b in eval_batches(preds.loaded, recipe.record_.input, 64)])
                logits.append((z[:, 1] - z[:, 0]).numpy())
        result[part] = (roc_auc_score(y, preds.outputs.numpy()[:, 1]), roc_auc_score(y, np.mean(logits, 0)))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, help="a folder of fold<k> MV-KBC runs")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "lidc_vois")
    args = parser.parse_args()
    folds = fold_dirs(args.runs)
    aucs = {"val": [], "heldout": []}
    for run_dir in folds:
        for part, pair in fold_aucs(run_dir, args.data).items():
            aucs[part].append(pair)
            print(f"{run_dir.name} {part:8s} plain {pair[0]:.4f} averaged {pair[1]:.4f}", flush=True)
    for part, pairs in aucs.items():
        plain, averaged = np.array(pairs).T * 100
        print(f"{part:8s} plain {plain.mean():.2f} ± {plain.std():.2f}  averaged {averaged.mean():.2f} ± "
              f"{averaged.std():.2f}  difference per fold {np.mean(averaged - plain):+.2f} ± {np.std(averaged - plain):.2f}")


if __name__ == "__main__":
    main()

"""Cross-fitting's one assumption, measured on finished ``crossfit`` runs of Fuse-TSD or fgFV.

A crossfit run fits its head (fgFV: encoding and SVM) on features made by k inner CNNs and
describes new cases with a final CNN trained on every training case (:mod:`medsight.recipes.crossfit`).
That holds only as far as the final CNN's features mean what the inner ones' meant. For the cases
of ``--split`` (``heldout``: the fold the run held out; ``val``: its validation cases) this prints,
per run:

- ``r same``: the Pearson correlation, over the cases (fgFV: over every local descriptor), of
  each feature channel of an inner CNN with the same channel of the final CNN, averaged over the
  channels and the k inner CNNs; ``r best``: the same with each final channel matched to its most
  correlated inner channel (``r same`` well below ``r best`` would mean the channels moved);
- with ``--peer RUN`` (the same recipe, data and split trained with another ``--seed``), ``r peer
  same`` / ``r peer best``: the same two numbers for that run's CNN against this run's final CNN,
  i.e. what two CNNs started from different initialisations share;
- the AUC of the run's fused prediction as ``predict`` makes it (the final CNN), against the
  alternative protocol: the head's probabilities averaged over the k inner CNNs' features.

    python -m benchmarks.crossfit_alignment bench_runs/lidc_cv/lidc_voi_fuse_tsd_crossfit/fold* \\
        --data ../shared/datasets/lidc_vois --split heldout
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from medsight.cli_input import open_input
from medsight.ensemble import load_runs
from medsight.recipes.common import load_cases
from medsight.recipes.crossfit import fold_stage
from medsight.recipes.network import build_network, restore_network
from medsight.rundir import RunDir


def channel_agreement(inner: np.ndarray, final: np.ndarray) -> tuple[float, float]:
    """(mean r of channel c with channel c, mean over final channels of their best |r| with any inner one)."""
    z = lambda a: (a - a.mean(0)) / np.where(a.std(0) > 0, a.std(0), np.inf)  # noqa: E731 (constant: r 0)
    r = z(inner).T @ z(final) / len(final)  # (inner channels, final channels)
    return float(np.mean(np.diag(r))), float(np.mean(np.abs(r).max(0)))


def auc(task, y: np.ndarray, proba: np.ndarray) -> float:
    if len(task.classes) == 2:
        return float(roc_auc_score(y, proba[:, 1]))
    return float(roc_auc_score(y, proba, multi_class="ovr", labels=list(range(len(task.classes)))))


def measure(path: Path, data: str, split: str, peer: Path | None = None) -> dict:
    recipe = load_runs([path], "cpu")
    record, run = recipe.record_, RunDir(path)
    k = sum(1 for name in record.stages if name.startswith("cnn_fold"))
    if not k:
        raise SystemExit(f"{path}: not a crossfit run (no inner CNN stages)")
    dataset = open_input((data,), None, recipe)
    ids = set(run.split_ids(split))
    dataset.samples = [s for s in dataset.samples if s.id in ids]
    loaded, _ = load_cases(dataset, recipe.cfg, record.input, recipe.needs_masks, recipe.console)
    by_id = {s.id: s for s in dataset.samples}
    y = np.array([record.task.label_of(by_id[i].diagnosis) for i in loaded.ids])

    computed = {n: fn(loaded)[0] for n, fn in getattr(recipe, "computed", {}).items()}  # Fuse-TSD's hand-crafted

    def features(model):  # (the CNN's features the head reads, the run's fused probabilities with them)
        if record.recipe == "fuse_tsd":
            from medsight.recipes.fuse_tsd import slice_features

            cnn = slice_features(model, loaded, record.input, recipe.cfg.cnn.min_pixels, recipe.device_)[0]
            return cnn, recipe.heads_.predict_proba({**computed, "cnn": cnn})
        from medsight.recipes.fgfv import local_descriptors

        cells = local_descriptors(model, loaded, record.input, recipe.cfg.fisher.scales, recipe.device_)[0]
        return np.concatenate(cells), recipe.heads_.predict_proba({"fisher": recipe.encoder_.transform(cells)})

    final, final_proba = features(recipe.model_)
    same, best, probas = [], [], []
    for j in range(k):
        spatial = 2 if record.recipe == "fuse_tsd" else None
        model = build_network(recipe.cfg, record.input, len(record.task.classes), spatial_dims=spatial)
        inner, proba = features(restore_network(model, path / fold_stage("cnn", j) / "model.safetensors",
                                                recipe.device_))
        s, b = channel_agreement(inner, final)
        same.append(s)
        best.append(b)
        probas.append(proba)
    out = {"cases": len(y), "k": k, "r same": float(np.mean(same)), "r best": float(np.mean(best))}
    if peer is not None:
        out["r peer same"], out["r peer best"] = channel_agreement(features(load_runs([peer], "cpu").model_)[0], final)
    return {**out, "AUC final CNN": auc(record.task, y, final_proba),
            "AUC mean over inner CNNs": auc(record.task, y, np.mean(probas, 0))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data", required=True, help="the dataset the runs were trained on")
    parser.add_argument("--split", choices=["heldout", "val"], default="heldout")
    parser.add_argument("--peer", type=Path, nargs="*", default=[],
                        help="for each run, a run of the same recipe and split with another --seed")
    args = parser.parse_args()
    if args.peer and len(args.peer) != len(args.runs):
        raise SystemExit("--peer: one peer run for each run")
    peers = args.peer or [None] * len(args.runs)
    rows = {run: measure(run, args.data, args.split, peer) for run, peer in zip(args.runs, peers)}
    keys = list(next(iter(rows.values())))
    print("| run | " + " | ".join(keys) + " |")
    print("|:---|" + "---:|" * len(keys))
    for run, row in rows.items():
        print(f"| {run} | " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    if len(rows) > 1:
        means = {key: np.mean([row[key] for row in rows.values()]) for key in keys}
        print("| mean | " + " | ".join(f"{v:.3f}" for v in means.values()) + " |")


if __name__ == "__main__":
    main()

"""Why a crossfit run predicts with its k inner CNNs and not with one CNN trained on every training case.

A crossfit run of Fuse-TSD or fgFV fits its head (fgFV: encoding and SVM) on features made by k
inner CNNs (:mod:`medsight.recipes.crossfit`). The usual stacking protocol would describe new cases
with one more CNN trained on every training case; that CNN is what a ``seen`` run of the same
config, data and seed trains (same initialisation, same cases). ``--final`` names such a run, and
for the cases of ``--split`` (``heldout``: the fold the run held out; ``val``: its validation
cases) this prints per crossfit run:

- ``r same``: the Pearson correlation, over the cases (fgFV: over every local descriptor), of
  each feature channel of an inner CNN with the same channel of the final CNN, averaged over the
  channels and the k inner CNNs; ``r best``: the same with each final channel matched to its most
  correlated inner channel (high ``r best`` with low ``r same``: the channels moved; with few
  cases and many channels ``r best`` is inflated by chance);
- with ``--peer`` (a ``seen`` run with another ``--seed``): ``r peer same`` / ``r peer best``,
  the same for that run's CNN against the final CNN: what CNNs from different initialisations share;
- the AUC of the crossfit run's head on the final CNN's features (the usual protocol), and as the
  run predicts: the head's probabilities averaged over the k inner CNNs' features.

    python -m benchmarks.crossfit_alignment CROSSFIT_RUN --final SEEN_RUN [--peer SEEN_RUN_SEED1] \\
        --data DATASET --split heldout
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from medsight.cli_input import open_input
from medsight.ensemble import load_runs
from medsight.recipes.common import load_cases
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


def measure(path: Path, final_run: Path, data: str, split: str, peer: Path | None = None) -> dict:
    recipe = load_runs([path], "cpu")
    record = recipe.record_
    if len(recipe.models_) < 2:
        raise SystemExit(f"{path}: not a crossfit run")
    dataset = open_input((data,), None, recipe)
    ids = set(RunDir(path).split_ids(split))
    dataset.samples = [s for s in dataset.samples if s.id in ids]
    loaded, _ = load_cases(dataset, recipe.cfg, record.input, recipe.needs_masks, recipe.console)
    by_id = {s.id: s for s in dataset.samples}
    y = np.array([record.task.label_of(by_id[i].diagnosis) for i in loaded.ids])
    computed = {n: fn(loaded)[0] for n, fn in getattr(recipe, "computed", {}).items()}  # Fuse-TSD's hand-crafted

    def features(model):  # (the CNN's features the head reads, the crossfit head's probabilities on them)
        if record.recipe == "fuse_tsd":
            from medsight.recipes.fuse_tsd import slice_features

            cnn = slice_features(model, loaded, record.input, recipe.cfg.cnn.min_pixels, recipe.device_)[0]
            return cnn, recipe.heads_.predict_proba({**computed, "cnn": cnn})
        from medsight.recipes.fgfv import local_descriptors

        cells = local_descriptors(model, loaded, record.input, recipe.cfg.fisher.scales, recipe.device_)[0]
        return np.concatenate(cells), recipe.heads_.predict_proba({"fisher": recipe.encoder_.transform(cells)})

    (final_model,) = load_runs([final_run], "cpu").models_
    final, final_proba = features(final_model)
    inner = [features(model) for model in recipe.models_]
    agreement = np.array([channel_agreement(f, final) for f, _ in inner])
    out = {"cases": len(y), "k": len(inner), "r same": float(agreement[:, 0].mean()),
           "r best": float(agreement[:, 1].mean())}
    if peer is not None:
        (peer_model,) = load_runs([peer], "cpu").models_
        out["r peer same"], out["r peer best"] = channel_agreement(features(peer_model)[0], final)
    return {**out, "AUC final CNN": auc(record.task, y, final_proba),
            "AUC k inner CNNs (as predicted)": auc(record.task, y, np.mean([p for _, p in inner], 0))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished crossfit run")
    parser.add_argument("--final", type=Path, required=True,
                        help="a seen run of the same config, data and seed (its CNN: the usual protocol's)")
    parser.add_argument("--peer", type=Path, help="a seen run with another --seed")
    parser.add_argument("--data", required=True, help="the dataset the runs were trained on")
    parser.add_argument("--split", choices=["heldout", "val"], default="heldout")
    args = parser.parse_args()
    row = measure(args.run, args.final, args.data, args.split, args.peer)
    print("| run | split | " + " | ".join(row) + " |")
    print("|:---|:---|" + "---:|" * len(row))
    print(f"| {args.run} | {args.split} | " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v)
                                                    for v in row.values()) + " |")


if __name__ == "__main__":
    main()

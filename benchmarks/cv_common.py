"""What the cross-validation benchmarks share: one fold of a recipe, trained and scored through the CLI."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from medsight.data.splits import kfold_indices
from medsight.rundir import RECORD_FILE, RunDir

ROOT = Path(__file__).resolve().parents[1]


def run_fold(config: str, data: Path, out: Path, fold: int | None, folds: int, name: str | None = None,
             overrides: tuple[str, ...] = (), split: str = "heldout", device: str = "cpu") -> dict:
    """Train ``config`` on every fold but ``fold`` (``--set data.folds/fold``; ``fold`` None: the
    layout's own train/val split) with ``--set overrides``, and evaluate it on ``split`` (the
    held-out fold by default), on ``device``. The run goes to ``out/<name or config>/fold<k>``; a run already
    scored is read back, not re-run."""
    run_dir = out / (name or Path(config).stem) / (f"fold{fold}" if fold is not None else "official")
    result_file = run_dir / f"{split}.json"
    run = RunDir(run_dir)
    if result_file.is_file() and "train_seconds" in (result := json.loads(result_file.read_text())):
        return result
    folding = () if fold is None else (f"data.folds={folds}", f"data.fold={fold}")
    train_run(config, data, run_dir, (*folding, *overrides), device)
    if not result_file.is_file():  # a score left without its timings by a stopped benchmark is kept
        subprocess.run([sys.executable, "-m", "medsight.cli", "evaluate", str(run_dir), str(data), "--split",
                        split, "--out", str(result_file), "--device", device], check=True)
    record = run.read_record()
    result = json.loads(result_file.read_text())
    result["train_seconds"] = record.train_seconds
    result["epochs_run"] = sum(stage.epochs_run for stage in record.stages.values())
    result_file.write_text(json.dumps(result, indent=2))
    return result


def train_run(config: str, data: Path, run_dir: Path, overrides: tuple[str, ...] = (), device: str = "cpu") -> Path:
    """``medsight train config`` into ``run_dir`` with ``--set overrides``, unless a finished run is there."""
    if not ((run_dir / RECORD_FILE).is_file() and RunDir(run_dir).read_record().finished):
        subprocess.run([sys.executable, "-m", "medsight.cli", "train", str(ROOT / config), "--data", str(data),
                        "--out", str(run_dir), "--device", device, *[a for o in overrides for a in ("--set", o)]],
                       check=True)
    return run_dir


def fold_dirs(runs: Path) -> list[Path]:
    """The ``fold<k>`` runs of a benchmark's folder, in fold order."""
    return sorted(runs.glob("fold*"), key=lambda p: int(p.name[4:]))


def folds_of(samples, task, folds: int, seed: int = 0) -> list[np.ndarray]:
    """The held-out indices medsight's ``data.folds`` uses (split_seed ``seed``), for the peers."""
    labels = [task.label_of(s.diagnosis) for s in samples]
    groups = [s.patient_id or s.id for s in samples]
    return kfold_indices(labels, groups, folds, seed=seed)


def write_summary(out: Path, sections: list[tuple[str, str]], timings: dict[str, list[dict]],
                  device: str = "CPU") -> None:
    """Print and save (``out/summary.md``) titled tables plus the training time per fold of each recipe."""
    from medsight.metrics import summarize_repeats
    from medsight.report import format_table

    times = {name: summarize_repeats([{"train_s": r["train_seconds"], "epochs": r["epochs_run"]} for r in runs])
             for name, runs in timings.items()}
    sections = [*sections, (f"{device} training time per run (seconds, epochs run):",
                            format_table(times, ["train_s", "epochs"], style="markdown", percent=False, digits=1))]
    text = "\n\n".join(part for section in sections for part in section)
    print(text)
    (out / "summary.md").write_text(text + "\n")


def at_thresholds(result: dict, run_dir: Path, data: Path) -> tuple[dict, dict]:
    """(metrics at the threshold the run chose on its validation cases, metrics at 0.5) of one
    fold's evaluation. Runs that store their threshold (``run.json``'s ``thresholds``) give both in
    their evaluation; for runs made before, the threshold is chosen here on the run's validation
    cases with the same rule (Youden's J, :mod:`medsight.metrics.thresholds`)."""
    if "fixed_threshold_metrics" in result:
        chosen = {**result["metrics"], "threshold": next(iter(result["threshold"].values()))}
        return chosen, result["fixed_threshold_metrics"]
    return threshold_metrics(run_dir, data), result["metrics"]


def fold_predictions(run_dir: Path, data: Path):
    """A fold run's restored recipe and, for its validation and held-out cases, ``(labels,
    predictions)`` (the labels in the order of the predicted cases)."""
    from medsight.data import open_dataset
    from medsight.recipes import load_recipe

    recipe = load_recipe(run_dir, device="cpu")
    run = RunDir(run_dir)
    dataset = open_dataset(data, format=recipe.cfg.data.format, **recipe.cfg.data.options)
    parts = {}
    for part in ("val", "heldout"):
        ids = set(run.split_ids(part))
        subset = dataclasses.replace(dataset, samples=[s for s in dataset.samples if s.id in ids])
        preds = recipe.predict(subset)
        by_id = {s.id: s for s in subset.samples}
        parts[part] = (np.array([recipe.record_.task.label_of(by_id[i].diagnosis) for i in preds.loaded.ids]), preds)
    return recipe, parts


def threshold_metrics(run_dir: Path, data: Path) -> dict:
    """Binary metrics of a fold run's held-out cases at the threshold chosen on its own validation
    cases (Youden's J), for runs that did not store one."""
    from medsight.metrics import binary_metrics
    from medsight.metrics.thresholds import youden_threshold

    _, parts = fold_predictions(run_dir, data)
    scores = {part: (y, preds.outputs.numpy()[:, 1]) for part, (y, preds) in parts.items()}
    threshold = youden_threshold(*scores["val"])
    return {**binary_metrics(*scores["heldout"], threshold=threshold), "threshold": threshold}

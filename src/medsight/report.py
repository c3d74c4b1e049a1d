"""Figures and reports: training curves, ROC curves, mask overlays, and run reports (HTML / Markdown)."""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from medsight.errors import InputError, MedsightError  # noqa: E402


def _finite(values):
    return [v if isinstance(v, (int, float)) and math.isfinite(v) else np.nan for v in values]


def plot_history(history: list[dict], path: Path, monitor: str | None = None) -> None:
    """Training loss, validation loss and the monitored metric against the epoch."""
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    axes[0].plot(epochs, _finite([r.get("loss") for r in history]), label="training loss")
    if any("val_loss" in r for r in history):
        axes[0].plot(epochs, _finite([r.get("val_loss") for r in history]), label="validation loss")
    axes[0].legend()
    if monitor and monitor != "val_loss":
        axes[1].plot(epochs, _finite([r.get(monitor) for r in history]), color="tab:green")
        axes[1].set_ylabel(f"validation {monitor}")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_roc(task, y: np.ndarray, proba: np.ndarray, path: Path) -> None:
    """One-vs-rest ROC curve of each positive class (the positive class alone for a binary task)."""
    from sklearn.metrics import roc_curve

    classes = [task.classes[-1]] if task.is_binary else list(task.classes)
    fig, ax = plt.subplots(figsize=(4.2, 4))
    for name in classes:
        k = task.classes.index(name)
        truth = y == k
        if truth.all() or not truth.any():
            continue
        fpr, tpr, _ = roc_curve(truth, proba[:, k])
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 (H, W, 3): the image with the predicted outline in yellow, the true one in green."""
    rgb = image.transpose(1, 2, 0) if image.ndim == 3 else image
    rgb = np.repeat(rgb[..., None], 3, -1) if rgb.ndim == 2 or rgb.shape[-1] == 1 else rgb
    rgb = np.ascontiguousarray(rgb[..., :3]).copy()
    for mask, colour in ((truth, (40, 220, 40)), (pred, (255, 230, 0))):
        if mask is None:
            continue
        mask = mask.astype(bool)
        edge = mask & ~ndimage.binary_erosion(mask, iterations=max(1, min(mask.shape) // 128))
        rgb[edge] = colour
    return rgb


def save_overlays(images, preds, truths, ids, path: Path, columns: int = 4) -> None:
    """A grid of overlays with each case's id and Dice score."""
    from medsight.metrics import segmentation_metrics

    n = len(ids)
    rows = max(1, math.ceil(n / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        ax = axes.flat[i]
        truth = None if truths is None else truths[i]
        ax.imshow(overlay(images[i], preds[i], truth))
        title = ids[i]
        if truth is not None:
            title += f"  DI {segmentation_metrics(preds[i], truth)['DI']:.2f}"
        ax.set_title(title, fontsize=8)
    fig.suptitle("yellow: predicted outline, green: reference", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- run reports ----------------------------------------------------------------------------------
FIGURES = ("training_curves.png", "validation_overlays.png", "validation_roc.png", "heldout_overlays.png")


def _load_run(run_dir: Path) -> dict:
    from medsight.rundir import RECORD_FILE, RunDir

    run = RunDir(run_dir)
    if not (run_dir / RECORD_FILE).is_file():
        raise InputError(run_dir, f"not a medsight run directory ({RECORD_FILE} is missing)")
    evaluations = {p.stem: json.loads(p.read_text()) for p in sorted(run_dir.glob("evaluation*.json"))}
    return {"dir": run_dir, "record": run.read_record(), "metrics": run.read_metrics(), "evaluations": evaluations,
            "figures": [run_dir / f for f in FIGURES if (run_dir / f).is_file()]}


def _rows(runs: list[dict]) -> dict[str, dict]:
    """One table row per run: the validation metrics of its best epoch, then each evaluation."""
    rows = {}
    for run in runs:
        name = run["dir"].name
        val = run["metrics"].get("validation", {})
        rows[f"{name} (validation)"] = {k: v for k, v in val.items()
                                        if k not in ("epoch", "loss", "val_loss", "lr", "seconds")}
        for stem, ev in run["evaluations"].items():
            rows[f"{name} ({ev.get('input', stem)})"] = ev.get("metrics", {})
    return rows


def write_report(run_dirs: list[Path], out: Path) -> Path:
    """A self-contained HTML (figures embedded) or Markdown (figures linked) report of runs."""
    from medsight.metrics import format_table

    if out.suffix not in (".html", ".md"):
        raise MedsightError(f"{out}: the report must end in .html or .md")
    if out.exists():
        raise MedsightError(f"{out}: exists; choose another --out")
    runs = [_load_run(Path(d)) for d in run_dirs]
    rows = _rows(runs)
    metrics = list(dict.fromkeys(k for r in rows.values() for k in r))
    if out.suffix == ".md":
        parts = ["# medsight report", "", format_table(rows, metrics, style="markdown"), ""]
        for run in runs:
            parts += [f"## {run['dir']}", "", _describe(run["record"]), ""]
            parts += [f"![{f.name}]({f.resolve()})" for f in run["figures"]] + [""]
        out.write_text("\n".join(parts))
        return out
    body = ["<h1>medsight report</h1>", "<pre>" + html.escape(format_table(rows, metrics, style="text")) + "</pre>"]
    for run in runs:
        body.append(f"<h2>{html.escape(str(run['dir']))}</h2><p>{html.escape(_describe(run['record']))}</p>")
        for fig in run["figures"]:
            data = base64.b64encode(fig.read_bytes()).decode()
            body.append(f'<figure><img src="data:image/png;base64,{data}" style="max-width:100%">'
                        f"<figcaption>{fig.name}</figcaption></figure>")
    out.write_text("<!doctype html><html><head><meta charset='utf-8'><title>medsight report</title>"
                   "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}pre{background:#f4f4f4;"
                   "padding:8px}</style></head><body>" + "\n".join(body) + "</body></html>\n")
    return out


def _describe(record) -> str:
    """One sentence on a run: recipe, data, task, each network stage's epochs, time."""
    data, task = record.data, record.task
    stages = "; ".join(f"{name}: best epoch {st.best_epoch} of {st.epochs_run}"
                       for name, st in record.stages.items() if st.best_epoch)
    return (f"{record.recipe} recipe on {data.format} ({data.root}): {data.train} training / {data.val} validation "
            f"cases; task {task.name if task else None} ({', '.join(task.classes) if task else ''}); "
            + (f"{stages}; " if stages else "") + f"{record.train_seconds} s on {record.device}")

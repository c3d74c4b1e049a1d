"""Figures: training curves, ROC curves and mask overlays (matplotlib, written to files only)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402



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


def plot_rocs(task, y: np.ndarray, proba: np.ndarray, path: Path) -> None:
    """One ROC curve per finding (findings absent or always present are left out)."""
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    drawn = 0
    for k, name in enumerate(task.classes):
        truth = y[:, k] == 1
        if truth.all() or not truth.any():  # ROC undefined for this finding here
            continue
        fpr, tpr, _ = roc_curve(truth, proba[:, k])
        ax.plot(fpr, tpr, lw=1, label=name)
        drawn += 1
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    if drawn:
        ax.legend(fontsize=6 if drawn > 6 else 8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 (H, W, 3): the image with the predicted outline in yellow, the true one in green."""
    rgb = image.transpose(1, 2, 0) if image.ndim == 3 else image
    rgb = rgb[..., 0] if rgb.ndim == 3 and rgb.shape[-1] == 1 else rgb  # grey (1, H, W)
    rgb = np.repeat(rgb[..., None], 3, -1) if rgb.ndim == 2 else rgb
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

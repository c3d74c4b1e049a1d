"""Reading and writing 2D images with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medsight.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(path, f"cannot read image ({exc.__class__.__name__}: {exc})") from None
    return img


def read_image(path: str | Path) -> np.ndarray:
    """An RGB image as uint8 ``(3, H, W)``; grey, palette and RGBA images are converted."""
    img = _open(Path(path))
    if img.mode in ("I;16", "I;16B", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        img = Image.fromarray(arr.round().astype(np.uint8))
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def read_mask(path: str | Path) -> np.ndarray:
    """A binary mask as uint8 ``(H, W)`` of 0/1: any non-zero pixel is foreground."""
    img = _open(Path(path))
    arr = np.asarray(img.convert("L") if img.mode not in ("L", "1", "P") else img)
    if arr.ndim == 3:
        arr = arr.max(axis=-1)
    return (arr > 0).astype(np.uint8)


def write_png(path: str | Path, array: np.ndarray) -> None:
    """Write ``(H, W)`` or ``(H, W, 3)`` uint8 as PNG atomically (temp file then rename)."""
    from medsight.io import atomic_write  # its files follow the umask

    atomic_write(Path(path), lambda tmp: Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG"))

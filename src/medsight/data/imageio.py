"""Reading and writing 2D images with errors that name the file.

Images over a pixel limit are refused before they are decoded (a 30000 x 30000 PNG of a few
hundred kilobytes would need 2.7 GB as RGB): the file becomes one rejected case, not a crash.
The limit is PIL's own decompression-bomb guard, ``DEFAULT_MAX_PIXELS`` (about 9459 x 9459),
enforced strictly; ``set_max_pixels`` (``medsight --max-pixels N``) changes it.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medsight.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DEFAULT_MAX_PIXELS = 89_478_485  # PIL's default Image.MAX_IMAGE_PIXELS
_PIL_LIMIT = Image.MAX_IMAGE_PIXELS  # PIL's guard as medsight found it, restored with the default
_max_pixels: int | None = DEFAULT_MAX_PIXELS


def max_pixels() -> int | None:
    """The largest image (width x height) medsight decodes; None: no limit."""
    return _max_pixels


def set_max_pixels(limit: int | None = DEFAULT_MAX_PIXELS) -> None:
    """Refuse images of more than ``limit`` pixels (0 or None: no limit). PIL's own guard, which
    refuses at twice its limit, is raised with a larger limit so that this one decides."""
    global _max_pixels
    if limit is not None and limit < 0:
        raise ValueError(f"the pixel limit must be 0 (none) or positive, not {limit}")
    _max_pixels = limit or None
    if _max_pixels is None or _PIL_LIMIT is None:
        Image.MAX_IMAGE_PIXELS = None
    else:
        Image.MAX_IMAGE_PIXELS = max(_PIL_LIMIT, _max_pixels)


def _too_large(path: Path, pixels: str) -> InputError:
    return InputError(path, f"image of {pixels} pixels is over the limit of {_max_pixels:,} (a guard against "
                            "decompression bombs; `medsight --max-pixels N` changes it)")


def _open_header(path: Path) -> Image.Image:
    """The image with its header read and its size checked against the limit, not yet decoded."""
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        with warnings.catch_warnings():  # PIL warns between its limit and twice it; the check below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as exc:  # over twice PIL's limit: PIL tells the size only in words
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise _too_large(path, f"{int(found.group(1)):,}" if found else "too many") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(path, f"cannot read image ({exc.__class__.__name__}: {exc})") from None
    if _max_pixels is not None and img.width * img.height > _max_pixels:
        img.close()
        raise _too_large(path, f"{img.width} x {img.height} = {img.width * img.height:,}")
    return img


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) from the file's header, with the checks of ``read_image``."""
    with _open_header(Path(path)) as img:
        return img.height, img.width


def _open(path: Path) -> Image.Image:
    img = _open_header(path)
    try:
        img.load()
    except (OSError, ValueError) as exc:
        img.close()
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

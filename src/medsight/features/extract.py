"""What ``medsight features`` does: raw cases -> one row of named features per case.

This works on the original images, the way pyradiomics users work: volumes in their own units
(HU) and voxel spacing, 2D images as grey levels (the mean of the colour channels). Defaults
follow pyradiomics (a fixed bin width of 25, distance 1), so numbers can be compared with it.

- ``glcm``: the 24 GLCM statistics inside the mask (the whole image when a case has no mask).
- ``shape``: pyradiomics' 3D shape features for volumes; for 2D images the 2D shape features plus
  the Fourier descriptors of the largest region's contour. A mask is required.

What a case cannot give is an error naming its file: an empty mask, NaN or infinite values inside
the mask, a mask that does not match its image. A constant image (one grey level) is not an
error: its GLCM statistics take pyradiomics' defined values for one grey level.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from medsight.data import load_checked
from medsight.data.base import Dataset, Sample
from medsight.errors import FeatureError, InputError

KINDS = ("glcm", "shape")


@dataclass
class Settings:
    bin_width: float | None = None  # None with bin_count None: pyradiomics' default width, 25
    bin_count: int | None = None
    distances: tuple[int, ...] = (1,)
    n_coefficients: int = 16  # Fourier descriptors (2D shape)

    def as_dict(self) -> dict:
        return asdict(self)


def single_case(image: Path, mask: Path | None) -> Dataset:
    """A one-case dataset from an image (or volume) file and an optional mask file."""
    from medsight.data import volumeio
    from medsight.data.folder import IMAGE_SUFFIXES

    for path in (image, mask):
        if path is not None and not path.exists():
            raise InputError(path, "file not found")
    if volumeio.is_volume_file(image) or image.is_dir():
        spacing = volumeio.read_info(image).spacing
        sample = Sample(id=_stem(image), image=image, mask=mask, spacing=tuple(spacing), loader=volumeio.load,
                        meta={"source": str(image)})
    elif image.suffix.lower() in IMAGE_SUFFIXES:
        sample = Sample(id=_stem(image), image=image, mask=mask)
    else:
        raise InputError(image, "not an image or volume file medsight reads")
    return Dataset("file", image.parent, [sample], (), {})


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".mhd", ".mha", ".nrrd"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def case_arrays(sample: Sample) -> tuple[np.ndarray, np.ndarray | None, tuple[float, ...]]:
    """(grey image or volume as float64, mask or None, spacing in mm) of one case."""
    image, mask, problems = load_checked(sample)
    if problems:
        raise problems[0]
    if image.ndim == 4:  # (1, D, H, W) volume in its own units
        return image[0].astype(np.float64), mask, tuple(sample.spacing or (1.0, 1.0, 1.0))
    return image.astype(np.float64).mean(0), mask, (1.0, 1.0)


def describe(kind: str, image: np.ndarray, mask: np.ndarray | None, spacing, settings: Settings) -> dict:
    """Feature name -> value for one case, from the scikit-learn estimators that the recipes'
    descriptors (``medsight.features.describe``) use too."""
    if kind == "glcm":
        from medsight.features.glcm import GLCMTexture

        texture = GLCMTexture(distances=settings.distances, bin_width=settings.bin_width,
                              bin_count=settings.bin_count)
        return _row(texture, (image, mask))
    if kind == "shape":
        from medsight.features.shape import FourierShape, Shape2D, Shape3D

        if mask is None:
            raise FeatureError("shape features need a mask")
        if mask.ndim == 3:
            return _row(Shape3D(), (mask, spacing))
        shape = _row(Shape2D(), (mask, spacing))
        fourier = _row(FourierShape(n_coefficients=settings.n_coefficients), mask.astype(bool))
        return {**shape, **{f"Fourier{k}": v for k, v in enumerate(fourier.values())}}
    raise FeatureError(f"unknown feature kind {kind!r}; choose from {', '.join(KINDS)}")


def _row(estimator, sample) -> dict:
    """{feature name: value} of one sample through a fitted-on-the-spot estimator (fitting only
    checks the settings and names the features)."""
    estimator.fit(None)
    return dict(zip(estimator.feature_names_, estimator.transform([sample])[0].tolist()))


def extract(kind: str, dataset: Dataset, settings: Settings, progress=None) -> tuple[list[dict], list[InputError]]:
    """Rows ``{"id", feature...}`` for every case that can be described, and the rejected cases."""
    rows, rejected = [], []
    samples = dataset.samples if progress is None else progress(dataset.samples)
    for sample in samples:
        try:
            image, mask, spacing = case_arrays(sample)
            values = describe(kind, image, mask, spacing, settings)
        except InputError as exc:
            rejected.append(exc)
            continue
        except FeatureError as exc:
            mask_file = f" (mask {sample.mask})" if isinstance(sample.mask, Path) else ""
            rejected.append(InputError(sample.source, f"{exc}{mask_file}"))
            continue
        rows.append({"id": sample.id, **{k: float(v) for k, v in values.items()}})
    return rows, rejected

"""What ``medsight features`` does: raw cases -> one row of named features per case.

This works on the original images, the way pyradiomics users work: volumes in their own units
(HU) and voxel spacing, 2D images as grey levels (the mean of the colour channels). Defaults
follow pyradiomics (a fixed bin width of 25, distance 1), so numbers can be compared with it.

- ``glcm``: the 24 GLCM statistics inside the mask (the whole image when a case has no mask).
- ``shape``: pyradiomics' 3D shape features for volumes; for 2D images the 2D shape features plus
  the Fourier descriptors of the largest region's contour. A mask is required.
- Several kinds (``("glcm", "shape")``): their columns side by side, each file read once.

What a case cannot give is an error naming its file: an empty mask, NaN or infinite values inside
the mask (for every kind, although shape reads only the mask), a mask that does not match its
image. A constant image (one grey level) is not an error: its GLCM statistics take pyradiomics'
defined values for one grey level.

``extract(..., jobs=N)`` describes the cases in N processes (forked where the platform allows, so
that nothing is imported twice), in chunks, and gives the rows in the dataset's order: the same
rows as one process. The numbers come from the functions the scikit-learn estimators wrap
(``medsight.features.estimators``), without importing scikit-learn.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from medsight.data import imageio, load_checked
from medsight.data.base import Dataset, Sample
from medsight.errors import FeatureError, InputError

KINDS = ("glcm", "shape")
DEFAULT_BIN_WIDTH = 25.0  # pyradiomics' default


@dataclass
class Settings:
    bin_width: float | None = None  # None with bin_count None: pyradiomics' default width, 25
    bin_count: int | None = None
    distances: tuple[int, ...] = (1,)
    n_coefficients: int = 16  # Fourier descriptors (2D shape)

    def __post_init__(self):
        if self.bin_width is None and self.bin_count is None:
            self.bin_width = DEFAULT_BIN_WIDTH  # the effective value, as the settings file records it

    def as_dict(self) -> dict:
        return asdict(self)


def parse_kinds(text: str) -> tuple[str, ...]:
    """``"glcm"``, ``"shape"`` or ``"glcm,shape"`` as a tuple of kinds, or FeatureError."""
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds or len(set(kinds)) != len(kinds):
        raise FeatureError(f"unknown or repeated feature kind in {text!r}; choose from {', '.join(KINDS)}, "
                           "or several joined by commas (glcm,shape)")
    return kinds


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
    """(grey image or volume, mask or None, spacing in mm) of one case. Volumes keep their own
    dtype (int16 HU: the GLCM bins integers faster, to the same levels); 2D images become float64."""
    image, mask, problems = load_checked(sample)
    if problems:
        raise problems[0]
    if image.ndim == 4:  # (1, D, H, W) volume in its own units
        return image[0], mask, tuple(sample.spacing or (1.0, 1.0, 1.0))
    return image.astype(np.float64).mean(0), mask, (1.0, 1.0)


def describe(kinds: str | tuple[str, ...], image: np.ndarray, mask: np.ndarray | None, spacing,
             settings: Settings) -> dict:
    """Feature name -> value for one case, the kinds' columns in order."""
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if image.dtype.kind == "f":  # the README's contract for every kind: NaN or inf inside the mask is an error
        inside = image if mask is None else image[np.asarray(mask) != 0]
        if not np.isfinite(inside).all():
            raise FeatureError("image has NaN or inf inside the mask")
    row: dict[str, float] = {}
    for kind in kinds:
        row.update(_describe_one(kind, image, mask, spacing, settings))
    return row


def _describe_one(kind: str, image, mask, spacing, settings: Settings) -> dict:
    if kind == "glcm":
        from medsight.features.glcm import glcm_features

        return glcm_features(image, mask, distances=settings.distances, bin_width=settings.bin_width,
                             bin_count=settings.bin_count)
    if kind == "shape":
        from medsight.features.shape import fourier_descriptors, shape_features_2d, shape_features_3d

        if mask is None:
            raise FeatureError("shape features need a mask")
        if mask.ndim == 3:
            return shape_features_3d(mask, spacing)
        fourier = fourier_descriptors(mask.astype(bool), settings.n_coefficients)
        return {**shape_features_2d(mask, spacing), **{f"Fourier{k}": float(v) for k, v in enumerate(fourier)}}
    raise FeatureError(f"unknown feature kind {kind!r}; choose from {', '.join(KINDS)}")


def _describe_case(kinds, settings: Settings, sample: Sample) -> tuple[str, object]:
    """``("row", {"id", feature...})`` or ``("rejected", (path, problem))`` of one case; plain
    values, so that they come back from a worker process as they are."""
    try:
        image, mask, spacing = case_arrays(sample)
        values = describe(kinds, image, mask, spacing, settings)
    except InputError as exc:
        return "rejected", (exc.path, exc.problem)
    except FeatureError as exc:
        mask_file = f" (mask {sample.mask})" if isinstance(sample.mask, Path) else ""
        return "rejected", (sample.source, f"{exc}{mask_file}")
    return "row", {"id": sample.id, **{k: float(v) for k, v in values.items()}}


def _worker_start(max_pixels: int | None) -> None:
    imageio.set_max_pixels(max_pixels)  # a spawned worker starts from the default


def _results(kinds, dataset: Dataset, settings: Settings, jobs: int):
    """Each case's result, in the dataset's order."""
    samples = dataset.samples
    if jobs <= 1 or len(samples) < 3:
        for sample in samples:
            yield _describe_case(kinds, settings, sample)
        return
    from functools import partial

    # The first case here, before the fork: the workers then start with its imports done and the
    # numba kernels loaded (half a second each otherwise).
    yield _describe_case(kinds, settings, samples[0])
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods and os.name == "posix" else None)
    rest = samples[1:]
    jobs = min(jobs, len(rest))
    chunk = max(1, min(16, len(rest) // (4 * jobs)))  # several chunks a worker: an even finish
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_start,
                             initargs=(imageio.max_pixels(),)) as pool:
        yield from pool.map(partial(_describe_case, kinds, settings), rest, chunksize=chunk)


def extract(kinds: str | tuple[str, ...], dataset: Dataset, settings: Settings, progress=None,
            jobs: int = 1) -> tuple[list[dict], list[InputError]]:
    """Rows ``{"id", feature...}`` for every case that can be described, and the rejected cases;
    ``jobs`` processes share the cases (the rows are the same as with one)."""
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    results = _results(kinds, dataset, settings, jobs)
    if progress is not None:
        results = progress(results, len(dataset.samples))
    rows, rejected = [], []
    for what, value in results:
        if what == "row":
            rows.append(value)
        else:
            rejected.append(InputError(*value))
    return rows, rejected

"""Per-case descriptors for the descriptor recipes: preprocessed cases -> one named vector each.

A case is what a preprocessor made of it (``medsight.transforms.preprocess``): ``image`` uint8
``(C, *spatial)`` and its ``mask``. Three layouts are understood:

- a 2D image ``(C, H, W)`` with a mask ``(H, W)`` (dermoscopy): colour is averaged to grey;
- a volume ``(1, D, H, W)`` with a mask ``(D, H, W)`` (``nodule_crop``);
- planar views ``(V, S, S)`` with one mask per view ``(V, S, S)`` (``nodule_views`` with masks):
  every 2D descriptor is computed per view and the views are concatenated, view-major.

``spacing`` is the size of one pixel / voxel of the preprocessed arrays in mm (``None``: 1).

The numbers come from the scikit-learn estimators ``GLCMTexture`` (``medsight.features.glcm``),
``FourierShape``, ``Shape2D`` and ``Shape3D`` (``medsight.features.shape``), which wrap the
functions ``medsight features`` calls. A descriptor only says which samples a case gives them (its
planes, or a volume's slices) and how their rows make its vector. ``describe_cases`` hands the
samples of many cases to each estimator in one ``transform`` call, so ``GLCMTexture`` runs the
feature maths on stacks of matrices of many cases at once (``glcm_features_batch``). Every number
is then the one a case gives alone except MCC, which can move by an ulp or two (4.7e-16 relative
at most on the LIDC views): ``_glcm_kernels.mcc`` reduces the matrices in groups, each padded to
the largest of its group, so the rounding of one depends on its neighbours in the batch.

Options are typed, one pydantic section per descriptor (``DESCRIPTOR_OPTIONS``), so that recipe
configs can embed them; making one builds and fits its estimators, whose own checks then reject a
bad option when the config is read rather than at the first case.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
from pydantic import Field, ValidationError, field_validator, model_validator

from medsight.config import Section
from medsight.errors import FeatureError

_CASES_PER_CALL = 64  # cases per estimator call: batching gains little beyond, and GLCM counts stay < ~40 MB


# ---------------------------------------------------------------- options


class GLCMOptions(Section):
    """``glcm``: pyradiomics' GLCM statistics inside the mask, each the mean over the offsets
    (2D: 4 directions per distance; 3D: 13 at distance 1, 49 at distance 2).

    The inputs are uint8 after windowing, so the default is a fixed bin count (32) rather than a
    bin width in HU; a ``bin_width``, when given, replaces the bin count. ``features``: names from
    ``GLCM_FEATURES`` (None: all 24)."""

    distances: tuple[int, ...] = (1,)
    bin_width: float | None = None
    bin_count: int | None = 32
    features: tuple[str, ...] | None = None

    @field_validator("features", mode="before")
    @classmethod
    def _one_name(cls, value):
        return [value] if isinstance(value, str) else value  # one feature name: a list of one

    @model_validator(mode="after")
    def _check(self):
        self.estimator(3)
        return self

    def estimator(self, ndim: int):
        """The fitted ``GLCMTexture`` (the same for 2D and 3D planes)."""
        from medsight.features.estimators import GLCMTexture

        return GLCMTexture(distances=self.distances, bin_width=self.bin_width,
                           bin_count=None if self.bin_width else self.bin_count, features=self.features).fit(None)


class FourierOptions(Section):
    """``fourier``: Fourier descriptors of the mask's contour, ``n_coefficients`` of them. A
    volume's axial slices with at least ``min_pixels`` foreground pixels are averaged, weighted by
    their area (Fuse-TSD slices the nodule). The descriptors are scale-invariant by design;
    ``with_size`` appends the equivalent diameter 2 sqrt(area / pi) (mm) of the largest slice,
    since nodule size is the strongest single cue."""

    n_coefficients: int = 16
    min_pixels: int = Field(4, ge=1)
    with_size: bool = True

    @model_validator(mode="after")
    def _check(self):
        self.estimator(2)
        return self

    def estimator(self, ndim: int):
        """The fitted ``FourierShape`` (contours are 2D whatever the layout)."""
        from medsight.features.estimators import FourierShape

        return FourierShape(n_coefficients=self.n_coefficients).fit(None)


class ShapeOptions(Section):
    """``shape``: pyradiomics' shape features of the mask, the 3D ones (``SHAPE_3D_FEATURES``) for
    a volume, the 2D ones (``SHAPE_2D_FEATURES``) for a plane; ``features`` picks some (None or
    empty: all)."""

    features: tuple[str, ...] | None = None

    @field_validator("features", mode="before")
    @classmethod
    def _one_name(cls, value):
        return [value] if isinstance(value, str) else value  # one feature name: a list of one

    @model_validator(mode="after")
    def _check(self):
        from medsight.features.shape import SHAPE_2D_FEATURES, SHAPE_3D_FEATURES

        known = SHAPE_3D_FEATURES + tuple(f for f in SHAPE_2D_FEATURES if f not in SHAPE_3D_FEATURES)
        unknown = sorted(set(self.features or ()) - set(known))
        if unknown:  # which layout the names are for is known at the first case (``estimator``)
            raise FeatureError(f"unknown shape features {unknown}; choose from {list(known)}")
        return self

    def estimator(self, ndim: int):
        """The fitted ``Shape3D`` for volumes, ``Shape2D`` for planes."""
        from medsight.features.estimators import Shape2D, Shape3D

        return (Shape3D if ndim == 3 else Shape2D)(features=self.features or None).fit(None)


DESCRIPTOR_OPTIONS: dict[str, type[Section]] = {"glcm": GLCMOptions, "fourier": FourierOptions, "shape": ShapeOptions}


def descriptor_options(name: str, options: Section | dict | None = None, **kwargs) -> Section:
    """The typed options of descriptor ``name``: an options object, a dict, keywords, or an object
    or dict updated by keywords. A bad option is a FeatureError "options of descriptor ...".
    """
    if name not in DESCRIPTOR_OPTIONS:
        raise FeatureError(f"unknown descriptor {name!r}; known: {', '.join(DESCRIPTOR_OPTIONS)}")
    cls = DESCRIPTOR_OPTIONS[name]
    if isinstance(options, cls) and not kwargs:
        return options
    if isinstance(options, Section) and not isinstance(options, cls):
        raise FeatureError(f"options of descriptor {name!r}: expected {cls.__name__}, got {type(options).__name__}")
    raw = options.model_dump(exclude_unset=True) if isinstance(options, Section) else dict(options or {})
    try:
        return cls(**{**raw, **kwargs})
    except ValidationError as exc:
        raise FeatureError(f"options of descriptor {name!r}: {_validation_text(exc)}") from None


def _validation_text(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown option {key!r}")
            continue
        msg = str(err["ctx"]["error"]) if err["type"] == "value_error" else err["msg"]
        parts.append(f"{key}: {msg}" if key else msg)
    return "; ".join(parts)


# ---------------------------------------------------------------- descriptors

Plane = tuple[str, np.ndarray, np.ndarray]  # (feature-name prefix, grey plane or volume, its mask)
Request = tuple[int, Any]  # (the ndim that picks the estimator, the sample it transforms)


def _planes(image: np.ndarray, mask: np.ndarray) -> list[Plane]:
    """(prefix, grey image, mask) for each 2D plane or the one volume of a case."""
    if mask is None:
        raise FeatureError("this descriptor needs the case's mask")
    if image.ndim == mask.ndim and image.shape[0] > 1:  # one mask per view
        if image.shape != mask.shape:
            raise FeatureError(f"views {image.shape} and their masks {mask.shape} differ")
        return [(f"view{v}_", image[v].astype(np.float64), mask[v]) for v in range(len(image))]
    if image.shape[1:] != mask.shape:
        raise FeatureError(f"image {image.shape} and mask {mask.shape} do not match")
    return [("", image.astype(np.float64).mean(0), mask)]


class _Descriptor(NamedTuple):
    """What a descriptor asks of the estimators for one case, and the vector it makes of the answers.

    ``requests(planes, options, spacing) -> (requests, plan)``; ``vector(plan, results, options,
    spacing) -> (values, names)``, where ``results`` holds, per request, the estimator's row and
    its feature names."""

    requests: Callable[..., tuple[list[Request], Any]]
    vector: Callable[..., tuple[np.ndarray, list[str]]]


def _per_plane(stem: str, sample) -> _Descriptor:
    """A descriptor with one estimator row per plane, the planes' rows side by side."""

    def requests(planes, options, spacing):
        return [(m.ndim, sample(plane, m, spacing)) for _, plane, m in planes], [p for p, _, _ in planes]

    def vector(prefixes, results, options, spacing):
        names = [f"{prefix}{stem}_{k}" for prefix, (_, feats) in zip(prefixes, results) for k in feats]
        return np.concatenate([row for row, _ in results]), names

    return _Descriptor(requests, vector)


def _shape_sample(plane, m, spacing):
    """The mask with its spacing: all of it for a volume, the last two axes for a plane."""
    sp = tuple(spacing) if spacing is not None else (1.0,) * m.ndim
    return m, sp if m.ndim == 3 else sp[-2:]


def _fourier_requests(planes, options, spacing):
    """One contour per plane, or one per axial slice of a volume with ``min_pixels`` or more."""
    requests, plan = [], []
    for prefix, _, m in planes:
        slices = [m] if m.ndim == 2 else [s for s in m if s.sum() >= options.min_pixels]
        if not slices:
            raise FeatureError(f"no slice of the mask has {options.min_pixels} or more foreground pixels")
        requests += [(2, s.astype(bool)) for s in slices]
        plan.append((prefix, np.array([s.sum() for s in slices], dtype=np.float64)))
    return requests, plan


def _fourier_vector(plan, results, options, spacing):
    """Per plane: sum_s a_s F_s / sum_s a_s over its slices s (area a_s, descriptors F_s), then the
    equivalent diameter 2 sqrt(max_s a_s / pi) in mm (pixel side: the mean of the in-plane spacing)."""
    pixel_mm = 1.0 if spacing is None else float(np.mean(spacing[-2:]))
    values, names, rows = [], [], iter(row for row, _ in results)
    for prefix, areas in plan:
        coeffs = np.stack([next(rows) for _ in areas])
        values += list((coeffs * areas[:, None]).sum(0) / areas.sum())
        names += [f"{prefix}fourier_{k}" for k in range(options.n_coefficients)]
        if options.with_size:
            values.append(2 * np.sqrt(areas.max() / np.pi) * pixel_mm)
            names.append(f"{prefix}fourier_diameter_mm")
    return np.array(values), names


DESCRIPTORS: dict[str, _Descriptor] = {
    "glcm": _per_plane("glcm", lambda plane, m, spacing: (plane, m)),
    "fourier": _Descriptor(_fourier_requests, _fourier_vector),
    "shape": _per_plane("shape", _shape_sample),
}


# ---------------------------------------------------------------- entry points


def describe_cases(name: str, images: Sequence[np.ndarray], masks: Sequence[np.ndarray | None], spacing=None,
                   options: Section | dict | None = None, **kwargs) -> tuple[np.ndarray, list[str]]:
    """The descriptor ``name`` of many preprocessed cases: ``(n_cases, n_features)`` float64 and
    the feature names. Options: an object of ``DESCRIPTOR_OPTIONS[name]``, a dict, or keywords.

    A case that cannot be described is a FeatureError whose ``index`` is its position; when several
    cannot, the first, with the message it gives alone. The cases must share one layout.
    """
    options = descriptor_options(name, options, **kwargs)
    masks = [None] * len(images) if masks is None else masks
    if len(images) != len(masks):
        raise FeatureError(f"need one mask per case, got {len(images)} cases and {len(masks)} masks")
    descriptor, estimators = DESCRIPTORS[name], {}

    def estimator(ndim):  # options that suit no layout (shape features of 3D only, for planes) fail here
        if ndim not in estimators:
            try:
                estimators[ndim] = options.estimator(ndim)
            except FeatureError as err:
                raise FeatureError(f"options of descriptor {name!r}: {err}") from None
        return estimators[ndim]

    vectors = []
    for start in range(0, len(images), _CASES_PER_CALL):
        stop = min(start + _CASES_PER_CALL, len(images))
        vectors += _describe(descriptor, options, images[start:stop], masks[start:stop], spacing, estimator, start)
    if not vectors:
        return np.zeros((0, 0)), []
    names = vectors[0][1]
    for i, (_, other) in enumerate(vectors):
        if other != names:
            raise FeatureError(f"its {len(other)} features are not the first case's {len(names)}: "
                               f"the cases must share one layout", index=i)
    return np.stack([values for values, _ in vectors]).astype(np.float64, copy=False), names


def _describe(descriptor, options, images, masks, spacing, estimator, offset) -> list[tuple[np.ndarray, list[str]]]:
    """(values, names) of each case, ``offset`` the position of the first in the caller's list.

    A case-by-case loop would describe cases 0..k-1 before meeting case k's bad layout; so the
    requests of the cases before it are computed first, and their own failures come first."""
    requests, plans, failure = [], [], None
    for i, (image, mask) in enumerate(zip(images, masks)):
        try:
            case_requests, plan = descriptor.requests(_planes(image, mask), options, spacing)
        except FeatureError as err:
            failure = FeatureError(str(err), index=offset + i)
            break
        requests.append(case_requests)
        plans.append(plan)
    results = _transform(requests, estimator, offset)
    if failure is not None:
        raise failure
    return [descriptor.vector(plan, rows, options, spacing) for plan, rows in zip(plans, results)]


def _transform(requests: list[list[Request]], estimator, offset) -> list[list[tuple[np.ndarray, list[str]]]]:
    """Every request of every case through its estimator, one ``transform`` per estimator; the
    results go back to their case, in its order, each with the estimator's feature names.

    When a call fails, the requests are made again one at a time, case after case, as a loop
    over the cases would make them: the first that fails gives the case and the message."""
    queues = defaultdict(list)  # ndim -> [(case, position in the case, sample)]
    for i, case_requests in enumerate(requests):
        for j, (ndim, sample) in enumerate(case_requests):
            queues[ndim].append((i, j, sample))
    results = [[None] * len(case_requests) for case_requests in requests]
    fitted = {ndim: estimator(ndim) for ndim in queues}  # outside the try: an option error is no case's
    try:
        for ndim, queue in queues.items():
            rows = fitted[ndim].transform([sample for _, _, sample in queue])
            for (i, j, _), row in zip(queue, rows):
                results[i][j] = (row, fitted[ndim].feature_names_)
    except FeatureError:
        for i, case_requests in enumerate(requests):
            for ndim, sample in case_requests:
                try:
                    fitted[ndim].transform([sample])
                except FeatureError as err:
                    raise FeatureError(str(err), index=offset + i) from None
        raise
    return results


def describe_case(name: str, image: np.ndarray, mask: np.ndarray | None, spacing=None,
                  options: Section | dict | None = None, **kwargs) -> tuple[np.ndarray, list[str]]:
    """The descriptor ``name`` of one preprocessed case: (vector, feature names)."""
    values, names = describe_cases(name, [image], [mask], spacing, options, **kwargs)
    return values[0], names

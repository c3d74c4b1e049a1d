"""Seeded, reproducible chest-X-ray-like images with ChestX-ray14 findings: a multi-label test set.

Each image is grey: a bright body on a dark background, two darker lung fields, faint rib arcs over
the lungs, a brighter heart shadow low in the middle, gentle low-frequency shading and noise. Each
requested finding is present independently of the others and places its own shape:

- Effusion: a bright meniscus filling the bottom of one lung field;
- Mass: one large, lobulated bright blob inside a lung;
- Nodule: one or two small bright dots inside the lungs;
- Cardiomegaly: a widened (and slightly taller) heart shadow;
- the other ChestX-ray14 labels have shapes too (Atelectasis a flat band, Infiltration a faint haze,
  Pneumonia a cluster of patches, Pneumothorax a dark crescent at a lung's lateral apex,
  Consolidation a dense irregular patch, Edema hazes at both hila, Emphysema darker lungs, Fibrosis
  a reticular pattern in both lower zones, Pleural_Thickening a band along a lateral wall, Hernia a
  blob below the heart), so any subset of the 14 can be asked for.

Every finding draws from its own random stream (a child of the image's), so an image generated
with a finding and the same image without it differ only where that finding's shape is: tests
(and CAM tests later) regenerate an image with :func:`make_chest_xray` and :func:`image_rng` and
compare. ``Sample.meta["centres"][label]`` is the ``(y, x)`` centre of each present finding's shape
(the first dot for Nodule, the left-image-side part for the bilateral ones) and
``meta["spots"][label]`` lists ``(y, x, radius)`` discs that together contain every pixel the
finding changes.

The same seed gives byte-identical images; image ``i`` does not depend on how many images follow.
Per label exactly ``round(n * prevalence)`` images carry it, at positions shuffled independently
per label, so small sets still have positives of every label.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from medsight.data.base import Dataset, Sample, Task
from medsight.data.chestxray14 import CLASSES as CHESTXRAY14_CLASSES
from medsight.data.chestxray14 import NO_FINDING
from medsight.data.formats import Format
from medsight.data.synthetic import _smooth_noise, image_size
from medsight.errors import MedsightError

DEFAULT_LABELS = ("Effusion", "Mass", "Nodule", "Cardiomegaly")
MIN_SIZE = 32


# --------------------------------------------------------------------------------------------
# geometry helpers


def _hw(size) -> tuple[int, int]:
    return image_size(size, MIN_SIZE, "synthetic-xray")


def _ellipse(g: dict, cy: float, cx: float, ay: float, ax: float, edge: float) -> np.ndarray:
    """Soft-edged filled ellipse: 1 inside, 0 outside, a ramp about ``edge`` pixels wide."""
    d = np.sqrt(((g["yy"] - cy) / ay) ** 2 + ((g["xx"] - cx) / ax) ** 2)
    return np.clip((1.0 - d) * min(ay, ax) / max(edge, 0.3) + 0.5, 0.0, 1.0)


def _blob(g: dict, cy: float, cx: float, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * ((g["yy"] - cy) ** 2 + (g["xx"] - cx) ** 2) / sigma ** 2)


def _spot(alpha: np.ndarray, g: dict, centre: tuple[float, float] | None = None) -> tuple[float, float, float]:
    """(y, x, radius): the centroid of ``alpha > 0.5`` (moved to the nearest pixel of it when the
    centroid falls outside, as for a crescent), or ``centre``; and the distance from there to the
    farthest pixel ``alpha`` visibly changes."""
    core = alpha > 0.5
    if centre is not None:
        cy, cx = centre
    elif core.any():
        cy, cx = float(g["yy"][core].mean()), float(g["xx"][core].mean())
        iy, ix = int(round(cy)), int(round(cx))
        if not core[iy, ix]:
            ys, xs = g["yy"][core], g["xx"][core]
            k = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
            cy, cx = float(ys[k]), float(xs[k])
    else:
        cy, cx = (float(v) for v in np.unravel_index(int(alpha.argmax()), alpha.shape))
    seen = alpha > 0.02
    r = float(np.hypot(g["yy"][seen] - cy, g["xx"][seen] - cx).max()) if seen.any() else 0.0
    return round(cy, 3), round(cx, 3), round(r + 1.0, 3)


# --------------------------------------------------------------------------------------------
# findings: each painter draws from its own stream and returns
#   (mode, value, parts): mode "add" adds value * alpha, "mix" blends towards value by alpha;
#   parts are the alpha layers of the shape's components (the first is the main one)


def _lung(rng: np.random.Generator, g: dict) -> int:
    return int(rng.integers(2))


def _in_lung(rng, g, side, fy=(-0.6, 0.6), fx=(-0.55, 0.55)):
    cy, cx, ay, ax = g["lungs"][side]
    return cy + ay * rng.uniform(*fy), cx + ax * rng.uniform(*fx)


def _effusion(rng, g):
    side = _lung(rng, g)
    cy, cx, ay, ax = g["lungs"][side]
    level = cy + ay * rng.uniform(0.35, 0.6)
    depth = ay * rng.uniform(0.15, 0.3)
    boundary = level - depth * ((g["xx"] - cx) / ax) ** 2  # the meniscus climbs the walls
    alpha = g["lung_alpha"][side] * np.clip((g["yy"] - boundary) / g["s"] + 0.5, 0.0, 1.0)
    # X-ray attenuation adds up: the fluid brings the lung base up to about the body's density
    return "add", g["body"] * rng.uniform(0.9, 1.0) - g["lung_value"], [alpha]


def _lobulated(rng, g, cy, cx, r, wobble):
    theta = np.arctan2(g["yy"] - cy, g["xx"] - cx)
    outline = np.ones_like(theta)
    for k, a in zip((2, 3, 5), wobble):
        outline += a * rng.uniform(0.3, 1.0) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    rho = np.hypot(g["yy"] - cy, g["xx"] - cx)
    return np.clip((r * outline - rho) / (0.8 * g["s"]) + 0.5, 0.0, 1.0)


def _mass(rng, g):
    cy, cx = _in_lung(rng, g, _lung(rng, g), (-0.45, 0.35), (-0.35, 0.35))
    r = rng.uniform(0.075, 0.1) * g["side"]
    return "add", rng.uniform(65.0, 85.0), [_lobulated(rng, g, cy, cx, r, (0.12, 0.08, 0.0))]


def _nodule(rng, g):
    count = 2 if rng.uniform() < 0.35 else 1
    radii = sorted(rng.uniform(0.025, 0.038, count) * g["side"], reverse=True)
    parts = []
    for r in radii:
        cy, cx = _in_lung(rng, g, _lung(rng, g), (-0.7, 0.6), (-0.6, 0.6))
        parts.append(_blob(g, cy, cx, r))
    return "add", rng.uniform(80.0, 100.0), parts


def _atelectasis(rng, g):
    side = _lung(rng, g)
    cy, cx, ay, ax = g["lungs"][side]
    y = cy + ay * rng.uniform(0.1, 0.45)
    band = _ellipse(g, y, cx, max(1.0, rng.uniform(0.018, 0.03) * g["side"]), 0.7 * ax, 0.6 * g["s"])
    return "add", rng.uniform(50.0, 65.0), [band]


def _infiltration(rng, g):
    cy, cx = _in_lung(rng, g, _lung(rng, g), (-0.4, 0.4), (-0.3, 0.3))
    sigma = rng.uniform(0.06, 0.09) * g["side"]
    texture = 0.75 + 0.25 * np.tanh(_smooth_noise(rng, g["shape"], 1.2 * g["s"]))
    return "add", rng.uniform(35.0, 45.0), [_blob(g, cy, cx, sigma) * texture]


def _pneumonia(rng, g):
    side = _lung(rng, g)
    cy, cx = _in_lung(rng, g, side, (0.0, 0.4), (-0.3, 0.3))
    alpha = np.zeros(g["shape"])
    for _ in range(3):
        dy, dx = rng.normal(0.0, 0.035 * g["side"], 2)
        alpha = np.maximum(alpha, _blob(g, cy + dy, cx + dx, rng.uniform(0.03, 0.045) * g["side"]))
    return "add", rng.uniform(45.0, 60.0), [alpha]


def _pneumothorax(rng, g):
    side = _lung(rng, g)
    cy, cx, ay, ax = g["lungs"][side]
    lateral = -1.0 if side == 0 else 1.0  # side 0 is the image's left lung
    d = np.sqrt(((g["yy"] - cy) / ay) ** 2 + ((g["xx"] - cx) / ax) ** 2)
    rim = np.clip((d - rng.uniform(0.55, 0.7)) / 0.1, 0.0, 1.0)
    upper = np.clip((cy - g["yy"]) / (0.2 * ay), 0.0, 1.0)
    where = upper * np.clip(lateral * (g["xx"] - cx) / (0.3 * ax) + 0.5, 0.0, 1.0)
    return "add", -rng.uniform(35.0, 45.0), [g["lung_alpha"][side] * rim * where]


def _consolidation(rng, g):
    cy, cx = _in_lung(rng, g, _lung(rng, g), (-0.2, 0.45), (-0.3, 0.3))
    r = rng.uniform(0.08, 0.105) * g["side"]
    alpha = _lobulated(rng, g, cy, cx, r, (0.18, 0.15, 0.1))
    texture = 0.85 + 0.15 * np.tanh(_smooth_noise(rng, g["shape"], 0.8 * g["s"]))
    return "add", rng.uniform(55.0, 70.0), [alpha * texture]


def _edema(rng, g):
    parts, sigma = [], rng.uniform(0.06, 0.08) * g["side"]
    for side in (0, 1):
        cy, cx, ay, ax = g["lungs"][side]
        medial = 1.0 if side == 0 else -1.0
        parts.append(_blob(g, cy + 0.15 * ay, cx + medial * 0.45 * ax, sigma))
    return "add", rng.uniform(28.0, 38.0), parts


def _emphysema(rng, g):
    return "add", -rng.uniform(22.0, 30.0), [g["lung_alpha"][0], g["lung_alpha"][1]]


def _fibrosis(rng, g):
    f, phase = rng.uniform(0.9, 1.2) / g["s"], rng.uniform(0, 2 * np.pi, 2)
    lines = np.maximum(np.abs(np.cos(f * g["yy"] + phase[0])), np.abs(np.cos(f * g["xx"] + phase[1]))) ** 3
    parts = []
    for side in (0, 1):
        cy, cx, ay, ax = g["lungs"][side]
        lower = np.clip((g["yy"] - (cy + 0.2 * ay)) / (0.15 * ay), 0.0, 1.0)
        parts.append(g["lung_alpha"][side] * lower * lines)
    return "add", rng.uniform(30.0, 40.0), parts


def _pleural_thickening(rng, g):
    side = _lung(rng, g)
    cy, cx, ay, ax = g["lungs"][side]
    lateral = -1.0 if side == 0 else 1.0
    d = np.sqrt(((g["yy"] - cy) / ay) ** 2 + ((g["xx"] - cx) / ax) ** 2)
    inner = rng.uniform(0.68, 0.76)  # a rind from there out to the chest wall
    band = np.clip((d - inner) / 0.08, 0.0, 1.0) * np.clip((1.06 - d) / 0.06, 0.0, 1.0)
    y0 = cy + ay * rng.uniform(-0.3, 0.3)
    where = np.exp(-0.5 * ((g["yy"] - y0) / (0.25 * ay)) ** 2) * np.clip(lateral * (g["xx"] - cx) / ax + 0.2, 0.0, 1.0)
    return "add", rng.uniform(45.0, 60.0), [band * where]


def _hernia(rng, g):
    hy, hx, hay, _ = g["heart"]
    cy, cx = hy + hay * rng.uniform(0.6, 0.9), hx + rng.uniform(-0.03, 0.03) * g["w"]
    return "add", rng.uniform(30.0, 40.0), [_ellipse(g, cy, cx, 0.06 * g["side"], 0.08 * g["side"], g["s"])]


PAINTERS: dict[str, Callable] = {
    "Atelectasis": _atelectasis, "Effusion": _effusion, "Infiltration": _infiltration, "Mass": _mass,
    "Nodule": _nodule, "Pneumonia": _pneumonia, "Pneumothorax": _pneumothorax,
    "Consolidation": _consolidation, "Edema": _edema, "Emphysema": _emphysema, "Fibrosis": _fibrosis,
    "Pleural_Thickening": _pleural_thickening, "Hernia": _hernia,
}  # Cardiomegaly changes the heart itself (in make_chest_xray)


# --------------------------------------------------------------------------------------------
# one image


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of image ``index`` of ``make_chest_xrays(seed=seed)`` (any ``n``)."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(1, int(index))))


def _check_labels(labels: Iterable[str], what: str = "labels") -> tuple[str, ...]:
    if isinstance(labels, str):
        labels = (labels,)
    labels = tuple(labels)
    unknown = [lab for lab in labels if lab not in CHESTXRAY14_CLASSES]
    if unknown:
        raise MedsightError(f"synthetic-xray: {what} {unknown} are not ChestX-ray14 labels "
                            f"({', '.join(CHESTXRAY14_CLASSES)})")
    if len(set(labels)) != len(labels):
        raise MedsightError(f"synthetic-xray: {what} repeat a label: {list(labels)}")
    return labels


def make_chest_xray(rng: np.random.Generator, size: int | tuple[int, int] = 64,
                    findings: Iterable[str] = ()) -> tuple[np.ndarray, dict[str, Any]]:
    """One chest-X-ray-like image with ``findings`` (ChestX-ray14 label names).

    Returns ``(image, attributes)``: ``image`` uint8 ``(1, H, W)``; ``attributes`` holds
    ``findings`` (the sorted list, in ChestX-ray14 order), ``centres`` and ``spots`` per finding
    (see the module docstring), ``lungs`` (``(cy, cx, ay, ax)`` per lung, image left first) and
    ``heart`` (``(cy, cx, ay, ax)`` as drawn). Only the pixels of a finding's shape depend on
    whether that finding is present."""
    h, w = _hw(size)
    findings = _check_labels(findings, "findings")
    present = [c for c in CHESTXRAY14_CLASSES if c in findings]
    streams = dict(zip(("anatomy",) + CHESTXRAY14_CLASSES, rng.spawn(1 + len(CHESTXRAY14_CLASSES))))
    r = streams["anatomy"]
    side = min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    g: dict[str, Any] = {"yy": yy, "xx": xx, "shape": (h, w), "h": h, "w": w, "side": side, "s": side / 64.0}

    # ---- body, lungs, ribs
    background = r.uniform(10.0, 25.0)
    g["body"] = body = r.uniform(150.0, 175.0)
    img = background + (body - background) * _ellipse(
        g, 0.55 * h, w * (0.5 + r.uniform(-0.01, 0.01)), 0.52 * h, 0.46 * w, 1.5 * g["s"])
    g["lung_value"] = lung_value = body * r.uniform(0.38, 0.48)
    lung_cy, offset = r.uniform(0.42, 0.47) * h, r.uniform(0.17, 0.2) * w
    lungs = []
    for sign in (-1.0, 1.0):
        lungs.append((lung_cy + r.uniform(-0.01, 0.01) * h, 0.5 * w + sign * offset + r.uniform(-0.01, 0.01) * w,
                      r.uniform(0.27, 0.31) * h, r.uniform(0.12, 0.14) * w))
    g["lungs"] = lungs
    g["lung_alpha"] = [_ellipse(g, *lung, 1.2 * g["s"]) for lung in lungs]
    lung_alpha = np.maximum(*g["lung_alpha"])
    img = img * (1 - lung_alpha) + lung_value * lung_alpha
    ribs = np.zeros((h, w))
    gap, top = r.uniform(0.09, 0.11) * h, lung_cy - 0.3 * h
    curve, width = r.uniform(0.6, 1.0), r.uniform(0.012, 0.018) * side
    for k in range(7):
        arc = top + k * gap + curve * h * ((xx - 0.5 * w) / w) ** 2
        ribs = np.maximum(ribs, np.exp(-0.5 * ((yy - arc) / width) ** 2))
    img = img + r.uniform(10.0, 18.0) * ribs * lung_alpha

    # ---- heart (wider and a little taller with Cardiomegaly)
    heart = [r.uniform(0.6, 0.66) * h, w * (0.5 + r.uniform(0.02, 0.05)), r.uniform(0.11, 0.13) * h,
             r.uniform(0.11, 0.13) * w]
    heart_value = body + r.uniform(10.0, 25.0)
    normal = _ellipse(g, *heart, 1.2 * g["s"])
    g["heart"] = tuple(heart)
    centres: dict[str, tuple[float, float]] = {}
    spots: dict[str, list[tuple[float, float, float]]] = {}
    if "Cardiomegaly" in present:
        cr = streams["Cardiomegaly"]
        heart[3] *= cr.uniform(1.45, 1.7)
        heart[2] *= cr.uniform(1.05, 1.15)
        g["heart"] = tuple(heart)
        enlarged = _ellipse(g, *heart, 1.2 * g["s"])
        spot = _spot(enlarged - normal, g, centre=(heart[0], heart[1]))
        centres["Cardiomegaly"], spots["Cardiomegaly"] = spot[:2], [spot]
        normal = enlarged
    img = img * (1 - normal) + heart_value * normal

    # ---- findings, in ChestX-ray14 order
    for label in present:
        if label == "Cardiomegaly":
            continue
        mode, value, parts = PAINTERS[label](streams[label], g)
        alpha = parts[0] if len(parts) == 1 else np.maximum.reduce(parts)
        img = img + value * alpha if mode == "add" else img * (1 - alpha) + value * alpha
        spots[label] = [_spot(p, g) for p in parts]
        centres[label] = spots[label][0][:2]

    # ---- shading and noise
    img = img + 5.0 * _smooth_noise(r, (h, w), side / 5.0) + r.normal(0.0, 2.5, (h, w))
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)[None]
    rnd = lambda t: tuple(round(float(v), 3) for v in t)  # noqa: E731
    attributes = {"findings": present, "centres": {k: rnd(v) for k, v in centres.items()},
                  "spots": {k: [rnd(s) for s in v] for k, v in spots.items()},
                  "lungs": [rnd(lung) for lung in lungs], "heart": rnd(g["heart"])}
    return np.ascontiguousarray(image), attributes


# --------------------------------------------------------------------------------------------
# datasets


def _prevalences(prevalence, labels: tuple[str, ...]) -> list[float]:
    if isinstance(prevalence, dict):
        extra = set(prevalence) - set(labels)
        if extra:
            raise MedsightError(f"synthetic-xray: prevalence names labels not generated: {sorted(extra)}")
        values = [prevalence.get(lab, 0.3) for lab in labels]
    elif isinstance(prevalence, (list, tuple, np.ndarray)):
        if len(prevalence) != len(labels):
            raise MedsightError(f"synthetic-xray: {len(prevalence)} prevalences for {len(labels)} labels")
        values = list(prevalence)
    else:
        values = [prevalence] * len(labels)
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise MedsightError(f"synthetic-xray: prevalence must be numbers in [0, 1], got {prevalence!r}") from None
    if not all(0.0 <= v <= 1.0 for v in values):
        raise MedsightError(f"synthetic-xray: prevalence must be in [0, 1], got {prevalence!r}")
    return values


def make_chest_xrays(n: int = 200, size: int | tuple[int, int] = 64, seed: int = 0,
                     labels: Iterable[str] = DEFAULT_LABELS, prevalence=0.3) -> Dataset:
    """``n`` synthetic chest X-rays in memory with the multi-label task ``findings`` over ``labels``.

    ``prevalence`` (a number, one per label, or a dict label -> number; 0.3) is the fraction of the
    images carrying each label: exactly ``round(n * p)`` of them, chosen independently per label.
    Ids are ``cxr_0000``, ...; ``diagnosis`` is the ``"|"``-joined findings in ``labels`` order, or
    ``"No Finding"``; meta holds the attributes of :func:`make_chest_xray` and ``source``."""
    try:
        n, seed = int(n), int(seed)
    except (TypeError, ValueError) as exc:
        raise MedsightError(f"synthetic-xray: bad option ({exc})") from None
    if n < 0:
        raise MedsightError(f"synthetic-xray: n must be >= 0, got {n}")
    if seed < 0:
        raise MedsightError(f"synthetic-xray: seed must be >= 0, got {seed}")
    labels = _check_labels(labels)
    if not labels:
        raise MedsightError("synthetic-xray: labels must name at least one ChestX-ray14 label")
    hw = _hw(size)
    rates = _prevalences(prevalence, labels)

    label_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    has = np.zeros((n, len(labels)), dtype=bool)
    for j, p in enumerate(rates):
        has[: int(round(n * p)), j] = True
        label_rng.shuffle(has[:, j])

    source = f"synthetic-xray(seed={seed})"
    width = max(4, len(str(max(n - 1, 0))))
    samples = []
    for i in range(n):
        findings = [lab for lab, yes in zip(labels, has[i]) if yes]
        image, attrs = make_chest_xray(image_rng(seed, i), hw, findings)
        sid = f"cxr_{i:0{width}d}"
        meta = dict(attrs)
        meta["findings"] = findings
        meta["source"] = source
        samples.append(Sample(id=sid, image=image, diagnosis="|".join(findings) or NO_FINDING,
                              patient_id=sid, meta=meta))
    task = Task("findings", labels, {}, multilabel=True)
    return Dataset(name="synthetic-xray", root=Path(source), samples=samples, classes=labels,
                   tasks={"findings": task}, default_task="findings")


def read_synthetic_xray(root: str | Path | None = None, **options) -> Dataset:
    """Reader-registry entry for ``format="synthetic-xray"``: ``root`` is ignored (may be ``None``);
    ``options`` are those of :func:`make_chest_xrays`."""
    known = ("n", "size", "seed", "labels", "prevalence")
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise MedsightError(f"the synthetic-xray reader takes the options {', '.join(known)} "
                            f"(got {', '.join(unknown)})")
    return make_chest_xrays(**options)


FORMAT = Format("synthetic-xray", read_synthetic_xray, None, generated=True,
                description="generated multi-label chest X-rays (no path; options n, size, seed, labels, prevalence)")

__all__ = ["DEFAULT_LABELS", "PAINTERS", "image_rng", "make_chest_xray", "make_chest_xrays",
           "read_synthetic_xray", "FORMAT"]

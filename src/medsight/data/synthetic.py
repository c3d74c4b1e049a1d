"""Seeded, reproducible dermoscopy-like images: the demo's embedded data and the tests' workhorse.

Each image is a skin-toned background with gentle low-frequency shading, one pigmented lesion,
optional hair strokes and a dermoscope's vignetting. The lesion outline is a radius function

    r(theta) = r0 * (1 + sum_k a_k cos(k theta + phi_k))

with a few small low harmonics for benign lesions and more, larger high harmonics for malignant
ones (an irregular border); inside, smoothed noise blends light and dark brown, and malignant
lesions add blue-grey and near-black regions (colour variegation). Two latent levels in [0, 1],
``irregularity`` and ``variegation``, drive the border and the colours; they are drawn from
overlapping Beta distributions per class, so no single statistic separates the classes perfectly,
but the classes differ in ways a CNN (or two hand-crafted features) learns well.

The same seed gives byte-identical images: every image draws from its own child of
``numpy.random.SeedSequence(seed)``, so image ``i`` does not depend on how many images follow it.

``make_dermoscopy`` returns a :class:`~medsight.data.base.Dataset` held in memory;
``read_synthetic`` is its reader-registry entry; :func:`medsight.data.folder.write_folder` writes
it (or any dataset) in the ``folder`` layout (``images/<id>.png``, ``masks/<id>.png``, ``labels.csv``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medsight.data.base import Dataset, Sample, Task
from medsight.data.formats import Format
from medsight.errors import MedsightError

CLASSES = ("benign", "malignant")

# Latent-level distributions per class: Beta(a, b). Means ~0.30 vs ~0.66, overlapping tails.
_LEVEL_BETA = {False: (2.2, 5.0), True: (5.0, 2.6)}

# Reference lesion colours (RGB, 0-255), jittered per image.
_LIGHT_BROWN = np.array([178.0, 124.0, 84.0])
_DARK_BROWN = np.array([98.0, 58.0, 38.0])
_BLUE_GREY = np.array([112.0, 118.0, 132.0])
_NEAR_BLACK = np.array([42.0, 32.0, 32.0])

# Skin tones (RGB) between which each image's background is drawn: light pink-beige to tan.
_SKIN_LIGHT = np.array([238.0, 196.0, 182.0])
_SKIN_TAN = np.array([206.0, 150.0, 118.0])


# --------------------------------------------------------------------------------------------
# helpers


def image_size(size: int | tuple[int, int], minimum: int = 16, name: str = "synthetic") -> tuple[int, int]:
    """(height, width) from an int or a pair, refusing images smaller than ``minimum``."""
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        try:
            h, w = (int(s) for s in size)
        except (TypeError, ValueError):
            raise MedsightError(f"{name}: size must be an int or (height, width), got {size!r}") from None
    if h < minimum or w < minimum:
        raise MedsightError(f"{name}: images must be at least {minimum}x{minimum} pixels, got {w}x{h}")
    return h, w


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise, rescaled to zero mean and unit std.

    Large ``sigma`` is computed on a coarse grid and upsampled bilinearly, which is much cheaper
    and visually the same."""
    from scipy import ndimage  # here, not at the top: importing medsight.data stays cheap

    h, w = shape
    f = max(1, int(sigma // 3))
    sh, sw = max(2, -(-h // f)), max(2, -(-w // f))
    small = ndimage.gaussian_filter(rng.standard_normal((sh, sw)), sigma / f, mode="wrap")
    if f > 1:
        small = ndimage.zoom(small, (h / sh, w / sw), order=1, mode="nearest", grid_mode=True)[:h, :w]
    small = small - small.mean()
    sd = small.std()
    return small / sd if sd > 0 else small


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _radius_harmonics(rng: np.random.Generator, irregularity: float, r0: float
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Harmonic orders k, amplitudes a_k and phases phi_k of the lesion outline."""
    # Highest order grows with irregularity; keep each wave at least ~7 px long on the outline.
    k_max = int(round(3 + 9 * irregularity + rng.uniform(-1.0, 1.0)))
    k_max = int(np.clip(k_max, 3, max(3, min(14, 2 * np.pi * r0 / 7.0))))
    ks = np.arange(2, k_max + 1)
    amps = np.empty(len(ks))
    amps[0] = rng.uniform(0.0, 0.14)  # k = 2: ellipticity, any lesion
    hi = ks[1:]
    # exponential draws: a few orders dominate, so irregular outlines are lumpy rather than cog-like
    amps[1:] = (0.012 + 0.16 * irregularity ** 1.5) * rng.exponential(1.0, len(hi)) / hi ** 0.55
    total = amps.sum()
    if total > 0.6:  # keep r(theta) >= 0.4 r0: the lesion stays one star-shaped region
        amps *= 0.6 / total
    phases = rng.uniform(0.0, 2 * np.pi, len(ks))
    return ks, amps, phases


def _outline(theta: np.ndarray, ks: np.ndarray, amps: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """1 + sum_k a_k cos(k theta + phi_k), the outline relative to r0."""
    out = np.ones_like(theta)
    for k, a, p in zip(ks, amps, phases):
        out += a * np.cos(k * theta + p)
    return out


def _outline_shape_stats(ks, amps, phases) -> tuple[float, float]:
    """(1 - isoperimetric quotient, normalised energy of harmonics >= 3) of the continuous outline."""
    t = np.linspace(0.0, 2 * np.pi, 4096, endpoint=False)
    r = _outline(t, ks, amps, phases)
    dr = np.zeros_like(t)
    for k, a, p in zip(ks, amps, phases):
        dr -= a * k * np.sin(k * t + p)
    dt = t[1] - t[0]
    area = 0.5 * np.sum(r * r) * dt
    perim = np.sum(np.sqrt(r * r + dr * dr)) * dt
    iq = 4 * np.pi * area / perim ** 2
    energy_hi = 0.5 * float(np.sum(amps[ks >= 3] ** 2))
    energy = 1.0 + 0.5 * float(np.sum(amps ** 2))
    return float(1.0 - iq), energy_hi / energy


def _bezier_strokes(rng: np.random.Generator, shape: tuple[int, int], n: int) -> list[np.ndarray]:
    """``n`` quadratic Bezier curves crossing the image, as dense (m, 2) arrays of (y, x)."""
    h, w = shape
    m = 3 * (h + w)
    t = np.linspace(0.0, 1.0, m)[:, None]
    strokes = []
    for _ in range(n):
        # start and end on two different sides, slightly outside the image
        sides = rng.choice(4, size=2, replace=False)
        pts = []
        for side in sides:
            u = rng.uniform(0.0, 1.0)
            pts.append({0: (-2.0, u * w), 1: (h + 1.0, u * w), 2: (u * h, -2.0), 3: (u * h, w + 1.0)}[int(side)])
        p0, p2 = np.array(pts[0]), np.array(pts[1])
        mid = (p0 + p2) / 2
        p1 = mid + rng.normal(0.0, 0.25, 2) * np.array([h, w])
        strokes.append((1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2)
    return strokes


# --------------------------------------------------------------------------------------------
# one image


def make_lesion(rng: np.random.Generator, size: int | tuple[int, int] = (128, 128), malignant: bool = False,
                *, irregularity: float | None = None, variegation: float | None = None,
                hair: bool | None = None, return_layers: bool = False):
    """One dermoscopy-like image, its lesion mask and the attributes it was drawn with.

    Returns ``(image, mask, attributes)``: ``image`` uint8 ``(3, H, W)``, ``mask`` uint8 ``(H, W)``
    of 0/1 (the lesion before hair is drawn over it), and a dict of plain Python values:

    - ``label``: ``"benign"`` or ``"malignant"``;
    - ``irregularity_level`` / ``variegation_level``: the latent levels in [0, 1] that drove the
      border and the colours (drawn from overlapping per-class Beta distributions unless given);
    - ``border_irregularity``: 1 - 4 pi A / P^2 of the continuous outline (0 for a circle);
    - ``harmonic_energy``: energy of the outline's harmonics of order >= 3, normalised by the total;
    - ``colour_std``: mean over RGB of the std of the lesion's colours inside the mask (0-255);
    - ``n_colours``: how many of light brown, dark brown, blue-grey and near-black each dominate
      at least 5 % of the lesion;
    - ``lesion_fraction``, ``radius`` (r0 in pixels), ``centre`` ((y, x)), ``n_hairs``,
      ``vignetting`` (darkening strength at the corners).

    ``irregularity``, ``variegation`` and ``hair`` override the random draws. With
    ``return_layers=True`` a fourth item holds float layers: ``skin`` (H, W, 3), ``hair`` (the hair
    opacity, H, W) and ``vignette`` (the multiplicative field, H, W).
    """
    from scipy import ndimage

    h, w = image_size(size)
    side = min(h, w)
    scale = side / 128.0
    malignant = bool(malignant)
    a, b = _LEVEL_BETA[malignant]
    irr = float(rng.beta(a, b)) if irregularity is None else float(np.clip(irregularity, 0.0, 1.0))
    var = float(rng.beta(a, b)) if variegation is None else float(np.clip(variegation, 0.0, 1.0))

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)

    # ---- skin: a tone per image, low-frequency shading, faint fine texture
    tone = rng.uniform(0.0, 1.0)
    skin_rgb = (1 - tone) * _SKIN_LIGHT + tone * _SKIN_TAN + rng.normal(0.0, 6.0, 3)
    shade = _smooth_noise(rng, (h, w), side / 4.0)
    gy, gx = rng.normal(0.0, 0.06, 2)
    gradient = gy * (yy / h - 0.5) + gx * (xx / w - 0.5)
    fine = _smooth_noise(rng, (h, w), 0.8 * scale + 0.3)
    skin = skin_rgb[None, None, :] * (1.0 + 0.05 * shade + gradient + 0.012 * fine)[..., None]
    # a little redness where the shading is high (erythema-like)
    skin[..., 1:] -= (8.0 * np.clip(shade, 0, None))[..., None]

    # ---- lesion outline
    r0 = rng.uniform(0.15, 0.32) * side
    ks, amps, phases = _radius_harmonics(rng, irr, r0)
    r_max = r0 * (1.0 + amps.sum())
    cy = h / 2 + rng.uniform(-1, 1) * max(0.0, h / 2 - r_max - 3)
    cx = w / 2 + rng.uniform(-1, 1) * max(0.0, w / 2 - r_max - 3)
    dy, dx = yy - cy, xx - cx
    rho = np.hypot(dy, dx)
    theta = np.arctan2(dy, dx)
    table = np.linspace(-np.pi, np.pi, 4097)  # tabulate r(theta) once, interpolate per pixel
    r_theta = r0 * np.interp(theta, table, _outline(table, ks, amps, phases))
    signed = r_theta - rho  # > 0 inside the lesion
    mask = (signed >= 0).astype(np.uint8)
    if not mask.any():  # degenerate tiny image: at least the centre pixel
        mask[int(round(np.clip(cy, 0, h - 1))), int(round(np.clip(cx, 0, w - 1)))] = 1
    edge = rng.uniform(0.6, 1.8) * scale
    alpha = ndimage.gaussian_filter(np.clip(signed / max(edge, 0.5) + 0.5, 0.0, 1.0), edge)

    # ---- lesion colours
    # colour jitter: mostly a brightness change, little hue change (lesions stay brown)
    jitter = lambda c, s: c * rng.uniform(1 - s, 1 + s) + rng.normal(0.0, 3.0, 3)  # noqa: E731
    light, dark = jitter(_LIGHT_BROWN, 0.12), jitter(_DARK_BROWN, 0.15)
    blue, black = jitter(_BLUE_GREY, 0.1), jitter(_NEAR_BLACK, 0.15)
    inside = mask.astype(bool)
    # brown blend: smoothed noise with contrast growing with variegation, darker towards the centre
    n1 = _smooth_noise(rng, (h, w), max(1.5, r0 / 4.0))
    radial = 1.0 - np.clip(rho / np.maximum(r_theta, 1e-6), 0.0, 1.0)
    darkness = rng.normal(0.0, 0.6)
    wd = _sigmoid((0.5 + 2.8 * var) * n1 + 1.2 * (radial - 0.5) + darkness)
    lesion = (1 - wd)[..., None] * light + wd[..., None] * dark

    def _patch(frac: float, sigma: float) -> np.ndarray:
        """Soft weight map covering about ``frac`` of the lesion in smooth blobs."""
        if frac <= 0.0:
            return np.zeros((h, w))
        n = _smooth_noise(rng, (h, w), sigma)
        thr = np.quantile(n[inside], 1.0 - frac) if inside.any() else np.inf
        return 0.9 * _sigmoid((n - thr) / 0.25)

    f_blue = float(np.clip(0.9 * (var - 0.42) + rng.normal(0.0, 0.03), 0.0, 0.4))
    f_black = float(np.clip(0.7 * (var - 0.5) + rng.normal(0.0, 0.03), 0.0, 0.3))
    wb = _patch(f_blue, max(1.5, r0 / 5.0))
    wk = _patch(f_black, max(1.2, r0 / 7.0))
    lesion = (1 - wb)[..., None] * lesion + wb[..., None] * blue
    lesion = (1 - wk)[..., None] * lesion + wk[..., None] * black
    mottle = _smooth_noise(rng, (h, w), 1.0 * scale + 0.3)
    lesion = lesion * (1.0 + 0.05 * mottle)[..., None]

    if inside.any():
        colour_std = float(lesion[inside].std(axis=0).mean())
        weights = np.stack([(1 - wd) * (1 - wb) * (1 - wk), wd * (1 - wb) * (1 - wk), wb * (1 - wk), wk])
        dominant = weights[:, inside].argmax(axis=0)
        shares = np.bincount(dominant, minlength=4) / dominant.size
        n_colours = int((shares >= 0.05).sum())
    else:
        colour_std, n_colours = 0.0, 0

    img = (1 - alpha)[..., None] * skin + alpha[..., None] * lesion

    # ---- hair: thin dark curved strokes over skin and lesion, on some images
    has_hair = bool(rng.uniform() < 0.45) if hair is None else bool(hair)
    n_hairs = int(rng.integers(1, 7)) if has_hair else 0
    hair_alpha = np.zeros((h, w))
    if n_hairs:
        for stroke in _bezier_strokes(rng, (h, w), n_hairs):
            layer = np.zeros((h, w))
            yi, xi = np.rint(stroke[:, 0]).astype(int), np.rint(stroke[:, 1]).astype(int)
            ok = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
            layer[yi[ok], xi[ok]] = 1.0
            width = rng.uniform(0.45, 0.9) * scale
            layer = ndimage.gaussian_filter(layer, width)
            peak = layer.max()
            if peak > 0:
                hair_alpha = np.maximum(hair_alpha, np.clip(layer / peak * 1.3, 0.0, 1.0) * rng.uniform(0.75, 1.0))
        hair_rgb = np.array([48.0, 36.0, 30.0]) + rng.normal(0.0, 8.0, 3)
        img = (1 - hair_alpha)[..., None] * img + hair_alpha[..., None] * hair_rgb

    # ---- vignetting: a dermoscope's circular field darkens the corners
    strength = rng.uniform(0.55, 0.95)
    d = np.hypot((yy + 0.5 - h / 2) / (h / 2), (xx + 0.5 - w / 2) / (w / 2))
    start = rng.uniform(0.85, 1.05)
    vignette = 1.0 - strength * _smoothstep(start, start + 0.4, d)
    img = img * vignette[..., None]

    img = img + rng.normal(0.0, 1.5, img.shape)
    image = np.ascontiguousarray(np.clip(np.rint(img), 0, 255).astype(np.uint8).transpose(2, 0, 1))

    border_irregularity, harmonic_energy = _outline_shape_stats(ks, amps, phases)
    attributes: dict[str, Any] = {
        "label": CLASSES[int(malignant)],
        "irregularity_level": round(irr, 6),
        "variegation_level": round(var, 6),
        "border_irregularity": round(border_irregularity, 6),
        "harmonic_energy": round(harmonic_energy, 6),
        "colour_std": round(colour_std, 4),
        "n_colours": n_colours,
        "lesion_fraction": round(float(mask.mean()), 6),
        "radius": round(float(r0), 3),
        "centre": (round(float(cy), 3), round(float(cx), 3)),
        "n_hairs": n_hairs,
        "vignetting": round(float(strength), 4),
    }
    if return_layers:
        return image, mask, attributes, {"skin": skin, "hair": hair_alpha, "vignette": vignette}
    return image, mask, attributes


# --------------------------------------------------------------------------------------------
# datasets


def make_dermoscopy(n: int = 200, size: int | tuple[int, int] = 128, seed: int = 0,
                    malignant_fraction: float = 0.4) -> Dataset:
    """``n`` synthetic dermoscopy cases in memory, ``round(n * malignant_fraction)`` of them malignant.

    Ids are ``syn_0000``, ``syn_0001``, ...; the dataset classes are ``("benign", "malignant")``
    and its one task, ``malignancy``, maps them to 0 and 1. Each sample's ``meta`` holds the
    attributes of :func:`make_lesion` and ``source = "synthetic(seed=...)"``.
    """
    try:
        n = int(n)
        seed = int(seed)
        malignant_fraction = float(malignant_fraction)
    except (TypeError, ValueError) as exc:
        raise MedsightError(f"synthetic: bad option ({exc})") from None
    if n < 0:
        raise MedsightError(f"synthetic: n must be >= 0, got {n}")
    if seed < 0:
        raise MedsightError(f"synthetic: seed must be >= 0, got {seed}")
    if not 0.0 <= malignant_fraction <= 1.0:
        raise MedsightError(f"synthetic: malignant_fraction must be in [0, 1], got {malignant_fraction}")
    hw = image_size(size)

    root_seq = np.random.SeedSequence(seed)
    label_seq, image_seq = root_seq.spawn(2)
    n_malignant = int(round(n * malignant_fraction))
    labels = np.zeros(n, dtype=bool)
    labels[:n_malignant] = True
    np.random.default_rng(label_seq).shuffle(labels)

    source = f"synthetic(seed={seed})"
    width = max(4, len(str(max(n - 1, 0))))
    samples = []
    for i, child in enumerate(image_seq.spawn(n)):
        image, mask, attrs = make_lesion(np.random.default_rng(child), hw, bool(labels[i]))
        sid = f"syn_{i:0{width}d}"
        meta = dict(attrs)
        meta["source"] = source
        samples.append(Sample(id=sid, image=image, mask=mask, diagnosis=attrs["label"],
                              patient_id=sid, meta=meta))
    task = Task("malignancy", CLASSES, {"benign": 0, "malignant": 1})
    return Dataset(name="synthetic", root=Path(source), samples=samples, classes=CLASSES,
                   tasks={"malignancy": task}, default_task="malignancy")


def read_synthetic(root: str | Path | None = None, n: int = 200, size: int | tuple[int, int] = 128,
                   seed: int = 0, malignant_fraction: float = 0.4) -> Dataset:
    """Reader-registry entry for ``format="synthetic"``: ``root`` is ignored (may be ``None``)."""
    return make_dermoscopy(n=n, size=size, seed=seed, malignant_fraction=malignant_fraction)


FORMAT = Format("synthetic", read_synthetic, None, generated=True, masks="always",
                description="generated dermoscopy-like images (no path; options n, size, seed, malignant_fraction)")

__all__ = ["make_lesion", "make_dermoscopy", "read_synthetic", "CLASSES", "FORMAT"]

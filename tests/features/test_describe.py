"""The per-case descriptors the descriptor recipes use (medsight.features.describe): Fourier, GLCM and
shape vectors of a volume or of its planar views, case by case and batched, their typed options and
their errors."""

from __future__ import annotations

import numpy as np
import pytest

from medsight.errors import FeatureError
from medsight.features.describe import (
    DESCRIPTOR_OPTIONS,
    FourierOptions,
    GLCMOptions,
    ShapeOptions,
    describe_case,
    describe_cases,
)


def disc(size=40, radius=10.0, centre=None):
    c = (size - 1) / 2 if centre is None else centre
    yy, xx = np.mgrid[:size, :size]
    return ((yy - c) ** 2 + (xx - c) ** 2 <= radius ** 2).astype(np.uint8)


def test_fourier_descriptor_of_a_volume_weights_slices_and_reports_size_in_mm():
    mask = np.stack([disc(radius=r) for r in (0, 4, 8, 4)])  # slice 0 is (nearly) empty
    image = np.zeros((1, *mask.shape), np.uint8)
    vec, names = describe_case("fourier", image, mask, spacing=(1.0, 0.5, 0.5), n_coefficients=6)
    assert names[-1] == "fourier_diameter_mm" and len(vec) == 7
    area = mask[2].sum()
    assert vec[-1] == pytest.approx(2 * np.sqrt(area / np.pi) * 0.5)  # the largest slice, in mm
    assert np.all(np.abs(vec[:-1]) < 0.05)  # discs: a circle has no energy beyond Z1


def test_view_descriptors_are_computed_per_view_and_named_by_view():
    masks = np.stack([disc(radius=r) for r in (6, 8, 10)])
    views = (masks * 200 + 20).astype(np.uint8)
    vec, names = describe_case("fourier", views, masks, n_coefficients=4, with_size=False)
    assert names[:4] == [f"view0_fourier_{k}" for k in range(4)] and names[-1] == "view2_fourier_3"
    assert vec.shape == (12,)
    shape_vec, shape_names = describe_case("shape", views, masks, spacing=(0.5, 0.5), features=["PixelSurface"])
    np.testing.assert_allclose(shape_vec, masks.reshape(3, -1).sum(1) * 0.25)
    assert shape_names == ["view0_shape_PixelSurface", "view1_shape_PixelSurface", "view2_shape_PixelSurface"]


def test_descriptor_errors_are_clear():
    image = np.zeros((1, 4, 40, 40), np.uint8)
    with pytest.raises(FeatureError, match="unknown descriptor"):
        describe_case("lbp", image, np.zeros((4, 40, 40), np.uint8))
    with pytest.raises(FeatureError, match="options of descriptor 'fourier'"):
        describe_case("fourier", image, np.zeros((4, 40, 40), np.uint8), bins=3)
    with pytest.raises(FeatureError, match="no slice"):
        describe_case("fourier", image, np.zeros((4, 40, 40), np.uint8))
    with pytest.raises(FeatureError, match="needs the case's mask"):
        describe_case("shape", image, None)
    with pytest.raises(FeatureError, match="options of descriptor 'shape': unknown shape features"):
        describe_case("shape", image, np.stack([disc()] * 4), features=["PixelSurface"])  # a 2D name, a volume


def nodules(n=5, seed=0):
    """Volumes (1, D, H, W) of noisy blobs of several sizes, and their masks (D, H, W)."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for i in range(n):
        mask = np.stack([disc(24, r) for r in (0, 3 + i, 5 + i, 4 + i, 2)])
        images.append(np.clip(rng.normal(60 + 20 * i, 25, (1, *mask.shape)), 0, 255).astype(np.uint8))
        masks.append(mask)
    return images, masks


@pytest.mark.parametrize("name, options", [("glcm", {"distances": [1, 2], "bin_count": 16}),
                                           ("fourier", {"n_coefficients": 6}), ("shape", {})])
def test_describe_cases_equals_case_by_case(name, options):
    images, masks = nodules()
    X, names = describe_cases(name, images, masks, (1.0, 0.7, 0.7), **options)
    assert X.shape == (5, len(names)) and X.dtype == np.float64
    for row, image, mask in zip(X, images, masks):
        vec, case_names = describe_case(name, image, mask, (1.0, 0.7, 0.7), **options)
        assert case_names == names
        # GLCM's MCC may differ in the last bit: its kernel groups the matrices of a batch
        np.testing.assert_allclose(row, vec, rtol=1e-14, atol=0)
    views, view_masks = [image[0, 1:4] for image in images], [mask[1:4] for mask in masks]  # 3 planar views
    V, view_names = describe_cases(name, views, view_masks, (0.7, 0.7), **options)
    assert V.shape == (5, len(view_names))
    assert view_names[0].startswith("view0_") and view_names[-1].startswith("view2_")
    for row, image, mask in zip(V, views, view_masks):
        vec, _ = describe_case(name, image, mask, (0.7, 0.7), **options)
        np.testing.assert_allclose(row, vec, rtol=1e-14, atol=0)


def test_describe_cases_names_the_first_case_that_fails():
    images, masks = nodules()
    empty = np.zeros_like(masks[0])
    with pytest.raises(FeatureError, match="no foreground") as err:
        describe_cases("glcm", images, masks[:2] + [empty, masks[3], empty])
    assert err.value.index == 2
    # a bad layout at case 3 comes after case 1's failure, as a case-by-case loop would meet them
    with pytest.raises(FeatureError, match="no foreground") as err:
        describe_cases("shape", images, [masks[0], empty, masks[2], masks[3][:, :3], masks[4]])
    assert err.value.index == 1
    with pytest.raises(FeatureError, match="do not match") as err:
        describe_cases("fourier", images, [masks[0], masks[1][:, :3], empty, masks[3], masks[4]])
    assert err.value.index == 1
    with pytest.raises(FeatureError, match="no slice") as err:
        describe_cases("fourier", images, masks[:4] + [empty])
    assert err.value.index == 4 and str(err.value) == "no slice of the mask has 4 or more foreground pixels"
    with pytest.raises(FeatureError, match="share one layout") as err:  # a volume, then 2D views
        describe_cases("glcm", [images[0], masks[1][1:] * 9], [masks[0], masks[1][1:]])
    assert err.value.index == 1
    X, names = describe_cases("glcm", [], [])
    assert X.shape == (0, 0) and names == []


def test_descriptor_options_are_typed_sections():
    assert DESCRIPTOR_OPTIONS == {"glcm": GLCMOptions, "fourier": FourierOptions, "shape": ShapeOptions}
    assert GLCMOptions().model_dump() == {"distances": (1,), "bin_width": None, "bin_count": 32, "features": None}
    assert FourierOptions().model_dump() == {"n_coefficients": 16, "min_pixels": 4, "with_size": True}
    assert ShapeOptions().model_dump() == {"features": None}
    for cls, raw in ((GLCMOptions, {"distances": [1, 2], "bin_count": 16, "features": "Contrast"}),
                     (FourierOptions, {"n_coefficients": 8, "with_size": False}),
                     (ShapeOptions, {"features": ["Sphericity"]})):
        options = cls(**raw)
        assert cls(**options.model_dump()) == options == cls(**options.model_dump(mode="json"))
    # an options object, a dict and keywords give the same vector
    images, masks = nodules(2)
    by_object = describe_cases("glcm", images, masks, options=GLCMOptions(bin_count=8, features=["Contrast"]))
    by_dict = describe_cases("glcm", images, masks, options={"bin_count": 8, "features": ["Contrast"]})
    by_keywords = describe_cases("glcm", images, masks, bin_count=8, features="Contrast")
    assert by_object[1] == by_dict[1] == by_keywords[1] == ["glcm_Contrast"]
    np.testing.assert_array_equal(by_object[0], by_keywords[0])
    np.testing.assert_array_equal(by_object[0], by_dict[0])
    # the estimators check the options when they are made: bad options fail before any case
    for name, bad, message in (("glcm", {"bin_count": 0}, "bin_count must be a positive integer"),
                               ("glcm", {"distances": [0]}, "distances must be positive integers"),
                               ("glcm", {"features": ["Nope"]}, "unknown GLCM features"),
                               ("fourier", {"n_coefficients": 0}, "n_coefficients must be a positive integer"),
                               ("fourier", {"min_pixels": 0}, "min_pixels"),
                               ("shape", {"features": ["Nope"]}, "unknown shape features")):
        with pytest.raises(FeatureError, match=f"options of descriptor '{name}': .*{message}") as err:
            describe_cases(name, images, [None, None], **bad)
        assert err.value.index is None
    with pytest.raises(FeatureError, match="options of descriptor 'glcm': expected GLCMOptions"):
        describe_cases("glcm", images, masks, options=FourierOptions())

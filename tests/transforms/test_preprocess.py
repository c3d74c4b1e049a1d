"""The nodule preprocessors (nodule_crop, nodule_views), on nodule volumes built in memory."""

import numpy as np
import pytest

from medsight.data.base import Sample
from medsight.errors import MedsightError
from medsight.transforms.preprocess import make_preprocess, nodule_crop_centre
from medsight.transforms.volume import mask_centre

from builders import SPACING, sphere


def nodule_sample(radius_mm=6.0, shape=(20, 60, 60), centre=(9.5, 31.0, 28.0)):
    mask = sphere(shape, centre, radius_mm)
    volume = np.where(mask > 0, 40, -850).astype(np.int16)[None]
    return Sample(id="n", image=volume, mask=mask, spacing=SPACING), volume, mask


def test_nodule_crop_keeps_physical_size():
    sample, volume, mask = nodule_sample(radius_mm=6.0)
    crop, _ = make_preprocess("nodule_crop", (16, 32, 32), size_mm=(32, 32, 32))(volume, None, sample)
    assert crop.shape == (1, 16, 32, 32) and crop.dtype == np.uint8
    bright = crop[0] > 127  # 40 HU vs -850 HU with the window [-1000, 400]
    sphere_fraction = 4 / 3 * np.pi * 6.0 ** 3 / 32 ** 3
    assert abs(bright.mean() - sphere_fraction) / sphere_fraction < 0.15
    assert bright[7:9, 15:17, 15:17].all()  # centred on the mask's centroid
    big, _ = make_preprocess("nodule_crop", (16, 32, 32))(*nodule_sample(radius_mm=10.0)[1:], nodule_sample(10.0)[0])
    assert (big[0] > 127).mean() > 3 * bright.mean()  # a larger nodule looks larger: size stays visible


def test_nodule_crop_of_a_case_without_mask_centres_on_the_annotated_centre():
    with_mask, volume, mask = nodule_sample(centre=(9.5, 31.0, 28.0))
    centre = tuple(mask_centre(mask))
    annotated = Sample(id="a", image=volume, spacing=SPACING, meta={"center_zyx": centre})  # LUNA16 / Tianchi
    crop = make_preprocess("nodule_crop", (16, 32, 32), size_mm=(32, 32, 32))
    got, got_mask = crop(volume, None, annotated)
    want, _ = crop(volume, None, with_mask)
    assert got_mask is None and np.array_equal(got, want)
    assert np.array_equal(nodule_crop_centre(volume, annotated), centre)
    off = Sample(id="b", image=volume, spacing=SPACING, meta={"center_zyx": (centre[0], centre[1] + 8, centre[2])})
    assert not np.array_equal(crop(volume, None, off)[0], want)  # 8 voxels further: another box
    views = make_preprocess("nodule_views", (32, 32))
    with pytest.raises(MedsightError, match="no nodule mask"):  # the views need the mask itself
        views(volume, None, annotated)


def test_nodule_views_channels_and_patch_types():
    sample, volume, mask = nodule_sample()
    views, _ = make_preprocess("nodule_views", (32, 32), patches=["OA", "HVV", "HS"])(volume, None, sample)
    assert views.shape == (27, 32, 32) and views.dtype == np.uint8
    oa, hvv, hs = views[0::3], views[1::3], views[2::3]
    assert oa.max() == 255 and oa.min() == 0
    inside = oa > 127  # the nodule in each view
    assert (hvv[~inside] == 0).all() and (hs[inside] == 0).all()
    only_oa, _ = make_preprocess("nodule_views", (32, 32))(volume, None, sample)
    assert np.array_equal(only_oa, oa)


def test_nodule_preprocessors_refuse_what_they_cannot_use():
    sample, volume, _ = nodule_sample()
    with pytest.raises(MedsightError, match="CT volume"):
        make_preprocess("nodule_crop", (8, 8, 8))(np.zeros((3, 8, 8), np.uint8), None, sample)
    empty = Sample(id="e", image=volume, mask=np.zeros(volume.shape[1:], np.uint8), spacing=SPACING)
    with pytest.raises(MedsightError, match="no nodule mask"):
        make_preprocess("nodule_crop", (8, 8, 8))(volume, None, empty)

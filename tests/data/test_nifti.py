"""The one-read NIfTI path (``medsight.data.nifti``) gives what ``nibabel.load`` gives, and hands
every file it does not read as-is (scaled data, a damaged file) to nibabel."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from medsight.data import nifti, volumeio
from medsight.errors import InputError


def by_nibabel(path):
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    return data.reshape(data.shape[:3]).transpose(2, 1, 0), img.affine, img.header.get_zooms()[:3]


def save(image, path):
    nib.save(image, str(path))
    return path


@pytest.mark.parametrize("name", ["v.nii.gz", "v.nii"])
@pytest.mark.parametrize("dtype", ["<i2", ">i2", "<f4", "u1", "<f8"])
@pytest.mark.parametrize("version", [1, 2])
def test_fast_read_equals_nibabel(tmp_path, name, dtype, version):
    rng = np.random.default_rng(0)
    data = (rng.normal(0, 200, (7, 5, 4)) if dtype[-2] == "f" else rng.integers(0, 200, (7, 5, 4))).astype(dtype)
    affine = np.array([[-0.7, 0.1, 0, 12.0], [0.05, 0.8, 0, -3.0], [0, 0, 2.5, 40.0], [0, 0, 0, 1]])
    cls = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    path = save(cls(data, affine), tmp_path / name)
    assert nifti.read(path) is not None and nifti.read_header(path) is not None  # the fast path is taken
    array, nib_affine, zooms = by_nibabel(path)
    volume = volumeio.read_nifti(path)
    assert volume.array.dtype == array.dtype and np.array_equal(volume.array, array)
    assert volume.array.flags.writeable and volume.array.flags.c_contiguous
    info = volumeio.read_info(path)
    for got in (volume, info):
        assert got.shape == (4, 5, 7)
        np.testing.assert_array_equal(got.affine, volumeio._LPS @ nib_affine @ volumeio._XYZ_TO_ZYX)
        assert got.spacing == tuple(round(float(z), 6) for z in zooms[::-1])


def test_trailing_singleton_axes_are_dropped(tmp_path):
    data = np.arange(24, dtype=np.int16).reshape(4, 3, 2, 1, 1)
    path = save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "v.nii.gz")
    assert np.array_equal(volumeio.read_nifti(path).array, data[..., 0, 0].transpose(2, 1, 0))


def test_scaled_data_go_through_nibabel(tmp_path):
    data = np.arange(60, dtype=np.int16).reshape(5, 4, 3)
    image = nib.Nifti1Image(data, np.eye(4))
    image.header.set_slope_inter(0.5, -10.0)
    path = save(image, tmp_path / "scaled.nii.gz")
    assert nifti.read(path) is None  # not read as-is
    array, *_ = by_nibabel(path)
    volume = volumeio.read_nifti(path)
    assert volume.array.dtype == array.dtype and np.allclose(volume.array, data.transpose(2, 1, 0) * 0.5 - 10)


def test_a_truncated_file_is_an_error_naming_it(tmp_path):
    noise = np.random.default_rng(0).integers(-1000, 1000, (20, 20, 20)).astype(np.int16)
    path = save(nib.Nifti1Image(noise, np.eye(4)), tmp_path / "cut.nii")
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    assert nifti.read(path) is None
    with pytest.raises(InputError) as info:
        volumeio.read_nifti(path)
    assert "cut.nii" in str(info.value)
    gz = tmp_path / "cut.nii.gz"
    packed = gzip.compress(whole)
    gz.write_bytes(packed[: len(packed) // 2])
    assert nifti.read(gz) is None and nifti.read_header(gz) is not None  # the header is whole
    with pytest.raises(InputError, match="cut.nii.gz"):
        volumeio.read_nifti(gz)
    gz.write_bytes(packed[:100])
    assert nifti.read_header(gz) is None
    with pytest.raises(InputError, match="cut.nii.gz"):
        volumeio.read_info(gz)
    with pytest.raises(InputError, match="file not found"):
        volumeio.read_info(tmp_path / "missing.nii.gz")


def test_real_vois_read_as_nibabel_reads_them(lidc_vois):
    files = sorted((lidc_vois / "VOIs").glob("*/*.nii.gz"))[::25]
    for path in files:
        array, *_ = by_nibabel(path)
        volume = volumeio.read_nifti(path)
        assert volume.array.dtype == array.dtype and np.array_equal(volume.array, array), path.name

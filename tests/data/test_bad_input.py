"""Bad input a user meets when reading data: a decompression-bomb image is one rejected case (with
its reason, under a documented pixel limit), a folder that is almost a layout names that layout and
what it lacks, and ``data check`` flags a mask that the layout promises and a case lacks."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from builders import CONFIGS, write_vois
from medsight.cli import main
from medsight.data import check_dataset, detect_format, open_dataset
from medsight.data import imageio
from medsight.data.folder import write_folder
from medsight.data.synthetic import make_dermoscopy
from medsight.errors import InputError
from test_readers import make_ph2


def cli(capsys, *args) -> tuple[int, str, str]:
    """``medsight ARGS`` in-process: (exit code, stdout, stderr with whitespace runs made one space)."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())


def flat(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def write_bomb_png(path: Path, width=30000, height=30000) -> Path:
    """A valid 1-bit grey PNG of width x height zeros: ~110 KB on disk, 2.7 GB once decoded as RGB."""
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed pixels
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    return write_bomb_png(tmp_path_factory.mktemp("bomb") / "bomb.png")


@pytest.fixture
def default_limit():
    """Every test ends with the default pixel limit, whatever it set."""
    yield
    imageio.set_max_pixels(imageio.DEFAULT_MAX_PIXELS)


def save_rgb(path: Path, size=(24, 20), seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


# -- 1. decompression bombs ------------------------------------------------------------------------

def test_a_bomb_is_an_input_error_naming_its_size_and_the_option(bomb):
    with pytest.raises(InputError) as info:
        imageio.read_image(bomb)
    message = str(info.value)
    assert str(bomb) in message and "900,000,000 pixels" in message and "--max-pixels" in message
    with pytest.raises(InputError, match="over the limit"):
        imageio.image_size(bomb)


def test_the_limit_is_strict_and_can_be_lowered_raised_or_lifted(tmp_path, default_limit):
    image = save_rgb(tmp_path / "small.png", size=(24, 20))  # 480 pixels
    assert imageio.read_image(image).shape == (3, 20, 24)
    imageio.set_max_pixels(479)
    with pytest.raises(InputError, match=r"24 x 20 = 480 pixels is over the limit of 479"):
        imageio.read_image(image)
    imageio.set_max_pixels(480)
    assert imageio.image_size(image) == (20, 24)
    # PIL only warns between its limit and twice it: medsight refuses there too
    big = write_bomb_png(tmp_path / "big.png", 10_000, 9_000)  # 90 M pixels, just over PIL's 89.5 M
    imageio.set_max_pixels(imageio.DEFAULT_MAX_PIXELS)
    with pytest.raises(InputError, match="10000 x 9000"):
        imageio.read_mask(big)
    imageio.set_max_pixels(0)  # no limit, PIL's guard lifted too
    assert imageio.max_pixels() is None and Image.MAX_IMAGE_PIXELS is None
    assert imageio.image_size(big) == (9_000, 10_000)
    assert imageio.image_size(write_bomb_png(tmp_path / "huge.png", 20_000, 20_000)) == (20_000, 20_000)
    imageio.set_max_pixels(imageio.DEFAULT_MAX_PIXELS)
    assert Image.MAX_IMAGE_PIXELS == imageio.DEFAULT_MAX_PIXELS


def test_data_check_lists_a_bomb_as_one_problem(bomb, tmp_path, capsys):
    folder = tmp_path / "images"
    save_rgb(folder / "good.png")
    (folder / "bomb.png").write_bytes(bomb.read_bytes())
    code, out, err = cli(capsys, "data", "check", folder)
    assert code == 2 and "Traceback" not in err
    assert "cases       2" in out and "problems    1" in out
    assert "bomb.png" in flat(out) and "900,000,000pixels" in flat(out)
    assert "min 20x24" in out  # the good image was measured; the bomb was not decoded
    # the same in the folder layout, with labels
    root = tmp_path / "labelled"
    save_rgb(root / "a.png")
    (root / "b.png").write_bytes(bomb.read_bytes())
    (root / "labels.csv").write_text("id,label\na,benign\nb,malignant\n")
    code, out, err = cli(capsys, "data", "check", root)
    assert code == 2 and "1 problem(s)" in err and "b.png" in flat(err)


def test_max_pixels_option_applies_to_one_command(tmp_path, capsys, default_limit):
    folder = tmp_path / "images"
    save_rgb(folder / "a.png", size=(24, 20))
    code, out, _ = cli(capsys, "--max-pixels", "100", "data", "check", folder)
    assert code == 2 and "480 pixels is over the limit of 100" in " ".join(out.split())
    code, out, _ = cli(capsys, "data", "check", folder)  # the next command has the default again
    assert code == 0 and "problems    none" in out
    code, _, err = cli(capsys, "--max-pixels", "-1", "data", "check", folder)
    assert code == 2 and "max-pixels" in err


def test_loading_for_predict_rejects_the_bomb_and_keeps_the_rest(bomb, tmp_path):
    from medsight.recipes.prepare import load_samples
    from medsight.transforms.preprocess import resize

    folder = tmp_path / "images"
    for k in range(3):
        save_rgb(folder / f"case{k}.png", seed=k)
    (folder / "case9.png").write_bytes(bomb.read_bytes())
    dataset = open_dataset(folder)
    loaded, rejected = load_samples(dataset.samples, resize((16, 16), 3), skip_bad=True)
    assert loaded.ids == ["case0", "case1", "case2"]
    assert len(rejected) == 1 and "case9.png" in str(rejected[0]) and "pixels" in str(rejected[0])


@pytest.mark.slow
def test_predict_lists_the_bomb_as_rejected_and_predicts_the_rest(bomb, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(CONFIGS / "demo_resnet.yaml"), "--out", str(run), "--epochs", "1", "--device", "cpu",
                 "--set", "data.options.n=24", "--set", "data.options.size=32", "--set", "data.image_size=[32,32]",
                 "--set", "model.options.width=8"]) == 0
    folder = tmp_path / "new"
    for k in range(3):
        save_rgb(folder / f"case{k}.png", seed=k)
    (folder / "huge.png").write_bytes(bomb.read_bytes())
    code, _, err = cli(capsys, "predict", run, folder, "--out", tmp_path / "preds", "--device", "cpu")
    assert code == 0, err
    assert "1 case(s) rejected" in err and "huge.png" in flat(err) and "900,000,000" in err
    rows = (tmp_path / "preds" / "predictions.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["case0", "case1", "case2"]


# -- 2. what a near-miss layout lacks --------------------------------------------------------------

def test_a_labels_csv_without_label_names_the_folder_layout_and_the_column(tmp_path, capsys):
    root = tmp_path / "mine"
    save_rgb(root / "a.png")
    (root / "labels.csv").write_text("id,diagnosis\na,benign\n")
    with pytest.raises(InputError) as info:
        detect_format(root)
    message = str(info.value)
    assert "Closest: folder" in message and "labels.csv has no column 'label'" in message
    assert "found: id, diagnosis" in message
    code, _, err = cli(capsys, "data", "check", root)
    assert code == 2 and "no column 'label'" in err and "Traceback" not in err


def test_other_near_misses(tmp_path):
    def lacks(path):
        with pytest.raises(InputError) as info:
            detect_format(path)
        return str(info.value)

    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "a.csv").write_text("id,label\n")
    (tmp_path / "two" / "b.csv").write_text("id,label\n")
    assert "folder" in lacks(tmp_path / "two") and "2 CSV files (a.csv, b.csv) and no labels.csv" in lacks(tmp_path / "two")

    ph2 = make_ph2(tmp_path / "ph2")
    (ph2 / "PH2 Dataset images").rename(tmp_path / "elsewhere")
    assert "Closest: ph2" in lacks(ph2) and "no folder 'PH2 Dataset images'" in lacks(ph2)

    vois = write_vois(tmp_path / "vois", n_patients=1)
    (vois / "MetadatabyNoduleMaxVoting.csv").unlink()
    assert "Closest: lidc-voi" in lacks(vois) and "no MetadatabyNoduleMaxVoting.csv" in lacks(vois)

    npz = tmp_path / "npz"
    npz.mkdir()
    np.savez(npz / "data.npz", images=np.zeros((2, 4, 4), np.uint8))
    assert "Closest: medmnist" in lacks(npz) and "data.npz has no <split>_images" in lacks(npz)

    (tmp_path / "empty").mkdir()
    assert "tried ph2" in lacks(tmp_path / "empty") and "Closest" not in lacks(tmp_path / "empty")


# -- 3. masks a layout promises --------------------------------------------------------------------

def test_ph2_case_without_its_lesion_mask_or_with_an_empty_one_is_a_problem(tmp_path, capsys):
    root = make_ph2(tmp_path / "ph2")
    (root / "PH2 Dataset images/IMD010/IMD010_lesion/IMD010_lesion.bmp").unlink()
    empty = root / "PH2 Dataset images/IMD020/IMD020_lesion/IMD020_lesion.bmp"
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(empty)
    problems, warnings = check_dataset(open_dataset(root))
    assert warnings == []
    assert sorted(p.problem for p in problems) == ["mask is empty (all zero)",
                                                   "no mask, although the ph2 layout gives every case one"]
    assert any("IMD010.bmp" in str(p) for p in problems) and any(str(empty) in str(p) for p in problems)
    code, out, err = cli(capsys, "data", "check", root)
    assert code == 2 and "problems    2" in out and "2 problem(s)" in err


def test_lidc_voi_with_an_empty_nodule_mask_is_a_problem(tmp_path):
    import nibabel as nib

    root = write_vois(tmp_path / "vois", n_patients=2)
    mask_file = sorted((root / "VOIs" / "nodule_mask").glob("*.nii.gz"))[0]
    mask = nib.load(str(mask_file))
    nib.save(nib.Nifti1Image(np.zeros(mask.shape, np.int16), mask.affine), str(mask_file))
    problems, warnings = check_dataset(open_dataset(root))
    assert [p.path for p in problems] == [str(mask_file)] and warnings == []


def test_where_masks_are_optional_the_same_findings_are_warnings(tmp_path, capsys):
    root = write_folder(make_dermoscopy(n=4, size=32, seed=1), tmp_path / "synth")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "masks" / "syn_0001.png")
    rows = (root / "labels.csv").read_text().splitlines()
    rows[3] = ",".join(rows[3].split(",")[:3] + [""])  # syn_0002 loses its mask
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    problems, warnings = check_dataset(open_dataset(root))
    assert problems == []
    assert [w.problem for w in warnings] == ["mask is empty (all zero)", "1 of 4 cases have no mask (syn_0002)"]
    code, out, _ = cli(capsys, "data", "check", root)
    assert code == 0 and "problems    none" in out
    assert "warning" in out and "mask is empty" in out and "1 of 4 cases have no mask" in out


def test_real_datasets_keep_their_promises(ph2, capsys):
    """The shared PH2 copy has every lesion mask, none empty."""
    code, out, _ = cli(capsys, "data", "check", ph2)
    assert code == 0 and "problems    none" in out and "warning" not in out

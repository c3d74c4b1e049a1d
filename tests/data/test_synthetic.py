"""The synthetic dermoscopy generator: reproducibility, shapes, the lesion's geometry and colours,
the nuisances (hair, vignetting), and that the label is learnable but not trivial."""

from __future__ import annotations

import importlib
import pkgutil

import numpy as np
import pytest
from scipy import ndimage

from medsight.data import open_dataset
from medsight.data.base import Dataset
from medsight.data.synthetic import make_dermoscopy, make_lesion, read_synthetic
from medsight.errors import InputError, MedsightError

skimage_measure = pytest.importorskip("skimage.measure")


@pytest.fixture(scope="module")
def ds300() -> Dataset:
    return make_dermoscopy(n=300, size=96, seed=3)


def _luma(image_chw: np.ndarray) -> np.ndarray:
    r, g, b = image_chw.astype(np.float64)
    return 0.299 * r + 0.587 * g + 0.114 * b


def _iso_ratio(mask: np.ndarray) -> float:
    """perimeter^2 / (4 pi area): 1 for a disc, larger for an irregular outline."""
    m = mask.astype(bool)
    return float(skimage_measure.perimeter(m) ** 2 / (4 * np.pi * m.sum()))


def _colour_std(image: np.ndarray, mask: np.ndarray) -> float:
    return float(image.astype(np.float64)[:, mask.astype(bool)].std(axis=1).mean())


# ---- reproducibility, records


def test_same_seed_gives_identical_data_and_different_seed_differs():
    a = make_dermoscopy(n=12, size=64, seed=7)
    b = make_dermoscopy(n=12, size=64, seed=7)
    c = make_dermoscopy(n=12, size=64, seed=8)
    for sa, sb in zip(a.samples, b.samples):
        assert sa.image.tobytes() == sb.image.tobytes()
        assert sa.mask.tobytes() == sb.mask.tobytes()
        assert sa.diagnosis == sb.diagnosis and sa.meta == sb.meta
    assert all(not np.array_equal(sa.image, sc.image) for sa, sc in zip(a.samples, c.samples))


def test_image_i_does_not_depend_on_n():
    short, long = make_dermoscopy(n=5, size=48, seed=1), make_dermoscopy(n=9, size=48, seed=1)
    # labels are shuffled per n, so compare only images whose label agrees
    compared = 0
    for s, t in zip(short.samples, long.samples):
        if s.diagnosis == t.diagnosis:
            assert np.array_equal(s.image, t.image)
            compared += 1
    assert compared >= 1


def test_dataset_records():
    ds = make_dermoscopy(n=10, size=(48, 80), seed=0, malignant_fraction=0.5)
    assert isinstance(ds, Dataset) and len(ds) == 10 and ds.name == "synthetic"
    assert [s.id for s in ds.samples] == [f"syn_{i:04d}" for i in range(10)]
    assert ds.classes == ("benign", "malignant")
    task = ds.task()
    assert ds.default_task == "malignancy" and task.name == "malignancy"
    assert task.classes == ("benign", "malignant") and task.mapping == {"benign": 0, "malignant": 1}
    for s in ds.samples:
        assert s.image.dtype == np.uint8 and s.image.shape == (3, 48, 80)
        assert s.mask.dtype == np.uint8 and s.mask.shape == (48, 80)
        assert set(np.unique(s.mask)) <= {0, 1}
        assert s.diagnosis in ds.classes and s.patient_id == s.id
        assert s.meta["label"] == s.diagnosis
        assert s.meta["source"] == "synthetic(seed=0)"
        for key in ("border_irregularity", "harmonic_energy", "colour_std", "n_colours", "n_hairs"):
            assert key in s.meta


@pytest.mark.parametrize("n, frac", [(200, 0.4), (37, 0.25), (10, 0.0), (10, 1.0)])
def test_malignant_fraction_is_respected(n, frac):
    ds = make_dermoscopy(n=n, size=32, seed=2, malignant_fraction=frac)
    assert sum(s.diagnosis == "malignant" for s in ds.samples) == round(n * frac)


def test_labels_are_shuffled_not_blocked():
    labels = [s.diagnosis == "malignant" for s in make_dermoscopy(n=60, size=32, seed=4).samples]
    assert any(labels[:24]) and not all(labels[:24])


def test_bad_options_are_refused():
    with pytest.raises(MedsightError):
        make_dermoscopy(n=4, size=8)
    with pytest.raises(MedsightError):
        make_dermoscopy(n=4, malignant_fraction=1.5)
    with pytest.raises(MedsightError):
        make_dermoscopy(n=-1)


def test_reader_registry_entry():
    ds = read_synthetic(None, n=6, size=40, seed=9)
    again = open_dataset(None, format="synthetic", n=6, size=40, seed=9)
    assert len(ds) == 6 and ds.samples[0].image.shape == (3, 40, 40)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(ds.samples, again.samples))


# ---- the format list (medsight.data.FORMATS)

ORDER = ["ph2", "isic2017", "isic2018", "medmnist", "lidc-voi", "lidc", "luna", "chestxray14", "folder", "images",
         "synthetic", "synthetic-xray"]
ALIASES = {"dermamnist": "medmnist", "ham10000": "isic2018", "lidc_voi": "lidc-voi", "lidc-idri": "lidc",
           "luna16": "luna", "tianchi": "luna"}


def test_format_list_is_complete_and_every_name_resolves():
    import medsight.data as data

    declared = set()  # every Format a module of medsight.data declares
    for info in pkgutil.iter_modules(data.__path__):
        module = importlib.import_module(f"medsight.data.{info.name}")
        declared.update([module.FORMAT] if hasattr(module, "FORMAT") else getattr(module, "FORMATS", ()))
    assert set(data.FORMATS) == declared and len(data.FORMATS) == len(declared)
    assert [f.name for f in data.FORMATS] == ORDER
    assert {a: f.name for f in data.FORMATS for a in f.aliases} == ALIASES
    for f in data.FORMATS:
        assert f.description and "\n" not in f.description
        assert data.get_format(f.name) is f and all(data.get_format(a) is f for a in f.aliases)
        assert (f.detect is None) == f.generated
    with pytest.raises(MedsightError, match=r"unknown format 'nope'; known: chestxray14, folder, .*, dermamnist"):
        data.get_format("nope")
    assert data.GENERATED == ("synthetic", "synthetic-xray")


@pytest.mark.parametrize("name", ["synthetic", "synthetic-xray"])
def test_generated_formats_need_no_path(name):
    ds = open_dataset(None, format=name, n=2, size=32, seed=1)
    assert ds.name == name and len(ds) == 2


def test_detection_follows_the_list_order(tmp_path, monkeypatch):
    import medsight.data as data
    from medsight.data.formats import Format

    # a PH2 root that also holds a labels.csv: ph2 comes before the catch-all folder layout
    (tmp_path / "PH2 Dataset images").mkdir()
    (tmp_path / "PH2_dataset.txt").write_text("")
    (tmp_path / "labels.csv").write_text("id,label\n")
    assert data.get_format("folder").detect(tmp_path) and data.detect_format(tmp_path) == "ph2"

    # detect_format asks the formats in list order, skips generated ones and names them all on failure
    asked = []

    def fake(name, answer):
        return Format(name, read=None, detect=lambda p: asked.append(name) or answer)
    monkeypatch.setattr(data, "FORMATS", (fake("a", False), Format("gen", None, None, generated=True),
                                          fake("b", True), fake("c", True)))
    assert data.detect_format(tmp_path) == "b" and asked == ["a", "b"]
    monkeypatch.setattr(data, "FORMATS", (fake("a", False), fake("b", False)))
    with pytest.raises(InputError, match=r"not a layout medsight recognises \(tried a, b\); name one with --format"):
        data.detect_format(tmp_path)


# ---- the lesion


def test_mask_is_one_connected_region_of_plausible_size(ds300):
    fractions = []
    for s in ds300.samples:
        _, n_regions = ndimage.label(s.mask)
        assert n_regions == 1, s.id
        fractions.append(s.mask.mean())
        assert s.meta["lesion_fraction"] == pytest.approx(s.mask.mean(), abs=1e-6)
    fractions = np.array(fractions)
    # radius 15-32 % of the side: area roughly 5-40 % of the image
    assert fractions.min() > 0.03 and fractions.max() < 0.5
    assert 0.1 < fractions.mean() < 0.3


def test_lesion_is_darker_than_the_skin_around_it(ds300):
    for s in ds300.samples[:40]:
        luma = _luma(s.image)
        inside = s.mask.astype(bool)
        ring = ndimage.binary_dilation(inside, iterations=6) & ~ndimage.binary_dilation(inside, iterations=2)
        assert np.median(luma[inside]) < np.median(luma[ring]) - 15, s.id


def test_malignant_borders_are_more_irregular(ds300):
    iso = np.array([_iso_ratio(s.mask) for s in ds300.samples])
    mal = np.array([s.diagnosis == "malignant" for s in ds300.samples])
    assert iso[mal].mean() > iso[~mal].mean() + 0.1
    # the recorded attribute agrees with the measured one
    recorded = np.array([s.meta["border_irregularity"] for s in ds300.samples])
    assert np.corrcoef(recorded, iso)[0, 1] > 0.7
    # but the classes overlap: some benign lesions are more irregular than some malignant ones
    assert iso[~mal].max() > iso[mal].min()


def test_malignant_lesions_have_more_colour_variegation(ds300):
    std = np.array([_colour_std(s.image, s.mask) for s in ds300.samples])
    n_colours = np.array([s.meta["n_colours"] for s in ds300.samples])
    mal = np.array([s.diagnosis == "malignant" for s in ds300.samples])
    assert std[mal].mean() > std[~mal].mean() + 3
    assert n_colours[mal].mean() > n_colours[~mal].mean() + 0.5
    assert std[~mal].max() > std[mal].min()


def test_blue_grey_and_black_appear_mostly_in_malignant_lesions(ds300):
    def blue_black_fraction(s):
        r, g, b = s.image.astype(np.float64)[:, s.mask.astype(bool)]
        return float(np.mean((b > r) | ((r + g + b) / 3 < 55)))

    frac = np.array([blue_black_fraction(s) for s in ds300.samples])
    mal = np.array([s.diagnosis == "malignant" for s in ds300.samples])
    assert frac[mal].mean() > 3 * frac[~mal].mean()


def test_latent_levels_control_the_outline():
    rng = np.random.default_rng(0)
    smooth = [make_lesion(rng, 128, False, irregularity=0.0)[1] for _ in range(5)]
    rough = [make_lesion(rng, 128, True, irregularity=1.0)[1] for _ in range(5)]
    assert max(_iso_ratio(m) for m in smooth) < min(_iso_ratio(m) for m in rough)


def test_make_lesion_rectangular_and_deterministic():
    a = make_lesion(np.random.default_rng(5), (40, 70), True)
    b = make_lesion(np.random.default_rng(5), (40, 70), True)
    assert a[0].shape == (3, 40, 70) and a[1].shape == (40, 70)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert a[2]["label"] == "malignant"


# ---- nuisances


def test_hair_pixels_are_darker_than_skin():
    darker = []
    for i in range(10):
        image, mask, attrs, layers = make_lesion(np.random.default_rng(i), 128, bool(i % 2), hair=True,
                                                 return_layers=True)
        assert attrs["n_hairs"] >= 1
        luma = _luma(image)
        central = layers["vignette"] > 0.98
        skin = (mask == 0) & central
        hair = skin & (layers["hair"] > 0.7)
        bare = skin & (layers["hair"] < 0.05)
        if hair.sum() < 5:
            continue
        darker.append(luma[hair].mean() < luma[bare].mean() - 60)
    assert len(darker) >= 5 and all(darker)


def test_hair_only_on_some_images(ds300):
    has_hair = np.array([s.meta["n_hairs"] > 0 for s in ds300.samples])
    assert 0.2 < has_hair.mean() < 0.8


def test_hair_off_draws_no_hair():
    image, _, attrs, layers = make_lesion(np.random.default_rng(1), 64, False, hair=False, return_layers=True)
    assert attrs["n_hairs"] == 0 and layers["hair"].max() == 0


def test_vignetting_darkens_the_corners(ds300):
    h, w = ds300.samples[0].mask.shape
    c = max(2, h // 12)
    corner_means, centre_means = [], []
    for s in ds300.samples:
        luma = _luma(s.image)
        corners = np.concatenate([luma[:c, :c].ravel(), luma[:c, -c:].ravel(),
                                  luma[-c:, :c].ravel(), luma[-c:, -c:].ravel()])
        corner_means.append(corners.mean())
        centre_means.append(luma[h // 2 - h // 4:h // 2 + h // 4, w // 2 - w // 4:w // 2 + w // 4].mean())
    assert np.mean(corner_means) < 0.6 * np.mean(centre_means)
    assert np.mean(np.array(corner_means) < np.array(centre_means)) > 0.95


# ---- learnability


def test_label_is_learnable_from_two_hand_features_but_not_trivially():
    linear_model = pytest.importorskip("sklearn.linear_model")
    metrics = pytest.importorskip("sklearn.metrics")
    model_selection = pytest.importorskip("sklearn.model_selection")
    ds = make_dermoscopy(n=300, size=128, seed=11)
    X = np.array([[_iso_ratio(s.mask), _colour_std(s.image, s.mask)] for s in ds.samples])
    y = np.array([s.diagnosis == "malignant" for s in ds.samples], dtype=int)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    proba = model_selection.cross_val_predict(linear_model.LogisticRegression(), X, y, cv=5,
                                              method="predict_proba")[:, 1]
    auc = metrics.roc_auc_score(y, proba)
    assert 0.75 < auc < 0.995, auc

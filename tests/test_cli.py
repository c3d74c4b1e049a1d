"""The command-line contract of docs/design.md, exercised in-process through ``medsight.cli.main``.

Two tiny models (a U-Net and a ResNet-18 on 40 synthetic 48-px images, 2 epochs) are trained once
per module; the tests then predict, evaluate, report and check data with them, and check that bad
input or usage ends with exit code 2 and one message naming the file, and that nothing is ever
overwritten. Messages go to stderr (rich), tables and summaries to stdout (click.echo).
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from medsight.cli import main
from medsight.data.folder import write_folder
from medsight.data.synthetic import make_dermoscopy
from medsight.metrics import binary_metrics
from medsight.rundir import RunDir

from builders import CONFIGS

UNET_CONFIG = CONFIGS / "demo_unet.yaml"
RESNET_CONFIG = CONFIGS / "demo_resnet.yaml"

TINY_DATA = ["--set", "data.options.n=40", "--set", "data.options.size=48"]
UNET_ARGS = ["--epochs", "2", "--device", "cpu", *TINY_DATA, "--set", "data.image_size=[48,48]",
             "--set", "model.options.channels=[8,16,32]"]
RESNET_ARGS = ["--epochs", "2", "--device", "cpu", *TINY_DATA, "--set", "data.image_size=[32,32]",
               "--set", "model.options.width=8"]

SEG_METRICS = ("JA", "DI", "AC", "SE", "SP")
RUN_FILES = ("config.yaml", "run.json", "model.safetensors", "history.csv", "split.json",
             "training_curves.png", "metrics.json")


# -- helpers ---------------------------------------------------------------------------------------


def cli(capsys, *args) -> tuple[int, str, str]:
    """Run ``medsight ARGS`` in-process: (exit code, stdout, stderr) of this call alone.

    stderr comes back with each run of whitespace turned into one space: rich wraps messages at
    the console width (80 columns when stderr is not a terminal)."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())


def flat(text: str) -> str:
    """``text`` without whitespace: rich wraps long lines (and paths) at the console width."""
    return re.sub(r"\s+", "", text)


def names(text: str, path: Path | str) -> bool:
    """Whether ``text`` names ``path`` (allowing for rich's line wrapping)."""
    return flat(str(path)) in flat(text)


def read_rows(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes, to show that nothing was touched."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def garbage_png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 400, dtype=np.uint8).tobytes())
    return path


def save_rgb(image_chw: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image_chw.transpose(1, 2, 0))).save(path)
    return path


# -- module fixtures: two tiny runs and held-out data ----------------------------------------------


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("seg") / "unet_run"
    assert main(["train", str(UNET_CONFIG), "--out", str(run), *UNET_ARGS]) == 0
    return run


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("cls") / "resnet_run"
    assert main(["train", str(RESNET_CONFIG), "--out", str(run), *RESNET_ARGS]) == 0
    return run


@pytest.fixture(scope="module")
def heldout(tmp_path_factory) -> Path:
    """12 labelled cases with masks, 60x60 (the runs were trained at 48 px), written by the CLI."""
    root = tmp_path_factory.mktemp("heldout") / "synth60"
    assert main(["data", "synth", str(root), "--n", "12", "--size", "60", "--seed", "3"]) == 0
    return root


@pytest.fixture(scope="module")
def heldout_rect(tmp_path_factory) -> Path:
    """5 labelled cases with masks, 50 high x 70 wide, in the folder layout."""
    root = tmp_path_factory.mktemp("heldout_rect") / "rect"
    write_folder(make_dermoscopy(n=5, size=(50, 70), seed=5), root)
    return root


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory, heldout) -> Path:
    """A plain folder of images (no CSV, no masks): the 'images' layout."""
    root = tmp_path_factory.mktemp("unlabelled") / "images"
    root.mkdir()
    for p in sorted((heldout / "images").glob("*.png"))[:4]:
        shutil.copy(p, root / p.name)
    return root


# -- 1. segmentation end to end --------------------------------------------------------------------


@pytest.mark.slow
def test_segmentation_run_directory(seg_run):
    for name in (*RUN_FILES, "validation_overlays.png"):
        assert (seg_run / name).is_file(), f"{name} missing from the run directory"
    assert not (seg_run / "checkpoint.pt").exists(), "the resume checkpoint is left behind"
    record = RunDir(seg_run).read_record()
    assert record.finished is True
    assert record.recipe == "segmentation"
    # the resolved config: the file's settings with the command line's overrides applied
    cfg = yaml.safe_load((seg_run / "config.yaml").read_text())
    assert cfg["recipe"] == "segmentation"
    assert cfg["train"]["epochs"] == 2
    assert cfg["data"]["options"]["n"] == 40
    assert list(cfg["data"]["image_size"]) == [48, 48]
    assert list(cfg["model"]["options"]["channels"]) == [8, 16, 32]
    _, history = read_rows(seg_run / "history.csv")
    assert [int(r["epoch"]) for r in history] == [1, 2]
    assert "validation" in json.loads((seg_run / "metrics.json").read_text())
    split = json.loads((seg_run / "split.json").read_text())
    assert len(split["train"]) + len(split["val"]) == 40
    assert not set(split["train"]) & set(split["val"])
    for png in ("training_curves.png", "validation_overlays.png"):
        with Image.open(seg_run / png) as img:
            assert img.format == "PNG"
    # the weights are safetensors, loadable without unpickling anything
    from safetensors.torch import load_file

    weights = load_file(str(seg_run / "model.safetensors"))
    assert weights and all(isinstance(t, torch.Tensor) for t in weights.values())


@pytest.mark.slow
def test_segmentation_predict_masks_at_input_size(seg_run, heldout_rect, tmp_path, capsys):
    out = tmp_path / "pred"
    code, _, err = cli(capsys, "predict", seg_run, heldout_rect, "--out", out, "--device", "cpu")
    assert code == 0, err
    columns, rows = read_rows(out / "predictions.csv")
    assert columns == ["id", "mask", "foreground_fraction"]
    ids = sorted(p.stem for p in (heldout_rect / "images").glob("*.png"))
    assert len(ids) == 5
    assert sorted(r["id"] for r in rows) == ids, "one row per input case"
    for row in rows:
        assert row["mask"] == f"masks/{row['id']}.png"
        mask = np.asarray(Image.open(out / row["mask"]))
        with Image.open(heldout_rect / "images" / f"{row['id']}.png") as img:
            assert (img.height, img.width) == (50, 70)
            assert mask.shape == (img.height, img.width), "mask must have the input image's height and width"
        assert mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) <= {0, 255}
        assert float(row["foreground_fraction"]) == pytest.approx((mask > 0).mean(), abs=1e-5)
    assert sorted(p.stem for p in (out / "masks").glob("*.png")) == ids


@pytest.mark.slow
def test_segmentation_predict_mixed_sizes(seg_run, heldout, heldout_rect, tmp_path, capsys):
    """Images of different sizes in one folder (and batch): each mask matches its own image."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    sizes = {}
    for prefix, src in (("sq", heldout), ("rect", heldout_rect)):
        for p in sorted((src / "images").glob("*.png"))[:2]:
            shutil.copy(p, folder / f"{prefix}_{p.name}")
            with Image.open(p) as img:
                sizes[f"{prefix}_{p.stem}"] = (img.height, img.width)
    assert {s for s in sizes.values()} == {(60, 60), (50, 70)}
    out = tmp_path / "pred"
    code, _, err = cli(capsys, "predict", seg_run, folder, "--out", out, "--device", "cpu")
    assert code == 0, err
    _, rows = read_rows(out / "predictions.csv")
    assert sorted(r["id"] for r in rows) == sorted(sizes)
    for case, hw in sizes.items():
        assert np.asarray(Image.open(out / "masks" / f"{case}.png")).shape == hw


@pytest.mark.slow
def test_segmentation_evaluate(seg_run, heldout, tmp_path, capsys):
    target = tmp_path / "metrics.json"
    code, out, err = cli(capsys, "evaluate", seg_run, heldout, "--out", target, "--device", "cpu")
    assert code == 0, err
    header = next((line for line in out.splitlines() if "JA" in line.split() and "DI" in line.split()), None)
    assert header is not None, f"no table with JA and DI columns in:\n{out}"
    result = json.loads(target.read_text())
    assert result["n"] == 12
    for key in SEG_METRICS:
        value = result["metrics"][key]
        assert value is not None and 0.0 <= value <= 1.0, (key, value)
    # the table shows the same numbers as the JSON (in percent)
    assert f"{100 * result['metrics']['JA']:.2f}" in out
    assert f"{100 * result['metrics']['DI']:.2f}" in out
    assert names(err, target)


# -- 2. classification end to end ------------------------------------------------------------------


@pytest.mark.slow
def test_classification_run_directory(cls_run):
    for name in (*RUN_FILES, "validation_roc.png"):
        assert (cls_run / name).is_file(), f"{name} missing from the run directory"
    assert not (cls_run / "checkpoint.pt").exists()
    assert RunDir(cls_run).read_record().finished is True


@pytest.mark.slow
def test_classification_predict(cls_run, heldout, tmp_path, capsys):
    out = tmp_path / "pred"
    code, _, err = cli(capsys, "predict", cls_run, heldout, "--out", out, "--device", "cpu")
    assert code == 0, err
    columns, rows = read_rows(out / "predictions.csv")
    assert columns == ["id", "p_malignant", "pred"]
    assert sorted(r["id"] for r in rows) == sorted(p.stem for p in (heldout / "images").glob("*.png"))
    assert yaml.safe_load((cls_run / "config.yaml").read_text())["predict"]["decision"] == "youden"
    threshold = RunDir(cls_run).read_record().thresholds["malignant"]  # chosen on the validation cases
    assert 0.0 < threshold < 1.0
    for row in rows:
        p = float(row["p_malignant"])
        assert 0.0 <= p <= 1.0
        assert row["pred"] in ("benign", "malignant")
        assert row["pred"] == ("malignant" if p >= threshold else "benign"), row
    assert not (out / "masks").exists()


@pytest.mark.slow
@pytest.mark.parametrize("method", [None, "gradcam++", "cam"])
def test_predict_maps_at_the_input_size(cls_run, heldout_rect, tmp_path, capsys, method):
    out = tmp_path / "pred"
    code, _, err = cli(capsys, "predict", cls_run, heldout_rect, "--out", out, "--device", "cpu",
                       "--maps", *([method] if method else []))
    assert code == 0, err
    for image in (heldout_rect / "images").glob("*.png"):
        size = Image.open(image).size
        grey, blend = Image.open(out / "maps" / image.name), Image.open(out / "overlays" / image.name)
        assert grey.size == size and grey.mode == "L" and blend.size == size and blend.mode == "RGB"
        assert np.asarray(grey).max() == 255  # scaled per map to its own maximum


@pytest.mark.slow
def test_maps_are_refused_for_segmentation(seg_run, heldout, tmp_path, capsys):
    code, _, err = cli(capsys, "predict", seg_run, heldout, "--out", tmp_path / "p", "--maps")
    assert code == 2 and "--maps" in err
    assert not (tmp_path / "p").exists()


@pytest.mark.slow
def test_classification_evaluate(cls_run, heldout, tmp_path, capsys):
    target = tmp_path / "metrics.json"
    code, out, err = cli(capsys, "evaluate", cls_run, heldout, "--out", target, "--device", "cpu")
    assert code == 0, err
    result = json.loads(target.read_text())
    assert result["n"] == 12
    # the metrics at the run's stored threshold and at 0.5, from the same probabilities predict writes
    code, _, err = cli(capsys, "predict", cls_run, heldout, "--out", tmp_path / "pred", "--device", "cpu")
    assert code == 0, err
    _, rows = read_rows(tmp_path / "pred" / "predictions.csv")
    labels = {r["id"]: r["label"] for r in csv.DictReader(open(heldout / "labels.csv"))}
    y = np.array([labels[r["id"]] == "malignant" for r in rows])
    p = np.array([float(r["p_malignant"]) for r in rows])
    threshold = RunDir(cls_run).read_record().thresholds["malignant"]
    assert result["threshold"] == {"malignant": threshold}
    for got, cut in ((result["metrics"], threshold), (result["fixed_threshold_metrics"], 0.5)):
        expected = binary_metrics(y, p, cut)
        for key in ("ACC", "SEN", "SPE", "AUC"):
            assert got[key] == pytest.approx(expected[key], abs=1e-5), (key, cut)
    header = out.splitlines()[0].split()
    assert {"AUC", "ACC"} <= set(header), out
    assert "threshold chosen on validation" in out and "at threshold 0.5" in out


# -- 3. nothing is ever overwritten ----------------------------------------------------------------


@pytest.mark.slow
def test_train_refuses_a_finished_run(seg_run, capsys):
    before = snapshot(seg_run)
    code, _, err = cli(capsys, "train", UNET_CONFIG, "--out", seg_run, *UNET_ARGS)
    assert code == 2
    assert names(err, seg_run)
    assert "finished" in err
    assert snapshot(seg_run) == before


def test_train_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    code, _, err = cli(capsys, "train", UNET_CONFIG, "--out", folder, *UNET_ARGS)
    assert code == 2
    assert names(err, folder)
    assert snapshot(folder) == {"notes.txt": b"keep me"}


@pytest.mark.slow
def test_predict_refuses_a_non_empty_out(seg_run, heldout, tmp_path, capsys):
    out = tmp_path / "pred"
    out.mkdir()
    (out / "predictions.csv").write_text("id,mine\nx,1\n")
    (out / "other.txt").write_text("keep me")
    before = snapshot(out)
    code, _, err = cli(capsys, "predict", seg_run, heldout, "--out", out, "--device", "cpu")
    assert code == 2
    assert names(err, out)
    assert snapshot(out) == before
    assert not (tmp_path / "pred.partial").exists()


@pytest.mark.slow
def test_evaluate_refuses_an_existing_out(cls_run, heldout, tmp_path, capsys):
    target = tmp_path / "metrics.json"
    target.write_text('{"mine": true}\n')
    code, _, err = cli(capsys, "evaluate", cls_run, heldout, "--out", target, "--device", "cpu")
    assert code == 2
    assert names(err, target)
    assert target.read_text() == '{"mine": true}\n'


# -- 4. resuming needs the same config -------------------------------------------------------------


@pytest.fixture
def unfinished_run(seg_run, tmp_path) -> Path:
    """A copy of the finished U-Net run marked unfinished (as if training had been interrupted)."""
    run = tmp_path / "unfinished"
    shutil.copytree(seg_run, run)
    saved = RunDir(run)
    saved.write_record(dataclasses.replace(saved.read_record(), finished=False))
    return run


@pytest.mark.slow
@pytest.mark.parametrize("change, key", [(["--set", "train.lr=0.01"], "train.lr"),
                                         (["--epochs", "3"], "train.epochs")])
def test_resume_refuses_a_different_config(unfinished_run, change, key, capsys):
    before = snapshot(unfinished_run)
    code, _, err = cli(capsys, "train", UNET_CONFIG, "--out", unfinished_run, *UNET_ARGS, *change)
    assert code == 2
    assert names(err, unfinished_run)
    assert key in err, err
    assert snapshot(unfinished_run) == before


# -- 5. bad input: exit 2 and one message naming the file ------------------------------------------


def test_config_with_unknown_key(tmp_path, capsys):
    raw = yaml.safe_load(UNET_CONFIG.read_text())
    raw["train"]["learning_rate"] = 0.1
    config = tmp_path / "typo.yaml"
    config.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", config, "--out", run, *UNET_ARGS)
    assert code == 2
    assert names(err, config)
    assert "train.learning_rate" in err
    assert "unknown key" in err
    assert not run.exists()


def test_config_file_not_found(tmp_path, capsys):
    config = tmp_path / "nope.yaml"
    code, _, err = cli(capsys, "train", config, "--out", tmp_path / "run")
    assert code == 2
    assert names(err, config)
    assert "not found" in err
    assert not (tmp_path / "run").exists()


def test_set_with_a_bad_value(tmp_path, capsys):
    code, _, err = cli(capsys, "train", UNET_CONFIG, "--out", tmp_path / "run", "--set", "train.epochs=abc")
    assert code == 2
    assert "train.epochs" in err
    assert names(err, UNET_CONFIG)
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_predict_with_a_folder_that_is_not_a_run(heldout, tmp_path, capsys):
    notrun = tmp_path / "notrun"
    notrun.mkdir()
    (notrun / "notes.txt").write_text("hello")
    out = tmp_path / "pred"
    code, _, err = cli(capsys, "predict", notrun, heldout, "--out", out)
    assert code == 2
    assert names(err, notrun)
    assert not out.exists()


@pytest.mark.slow
def test_predict_without_input_or_out_is_usage_error(seg_run, heldout, tmp_path, capsys):
    code, _, err = cli(capsys, "predict", seg_run, "--out", tmp_path / "p")
    assert code == 2 and "INPUT" in err
    code, _, err = cli(capsys, "predict", seg_run, heldout)
    assert code == 2 and "--out" in err


@pytest.mark.slow
def test_predict_input_not_found(seg_run, tmp_path, capsys):
    missing = tmp_path / "no_such_folder"
    code, _, err = cli(capsys, "predict", seg_run, missing, "--out", tmp_path / "p")
    assert code == 2
    assert names(err, missing)


def test_data_check_labels_name_a_missing_image(tmp_path, capsys):
    root = write_folder(make_dermoscopy(n=4, size=32, seed=1), tmp_path / "data")
    gone = root / "images" / "syn_0002.png"
    gone.unlink()
    code, out, err = cli(capsys, "data", "check", root)
    assert code == 2
    assert names(err, gone), err
    assert "not found" in err
    assert "Traceback" not in err


def test_data_check_missing_image_without_image_column(tmp_path, capsys):
    """labels.csv with only id,label: the image is looked up by id, and the message names the case."""
    root = tmp_path / "data"
    root.mkdir()
    ds = make_dermoscopy(n=3, size=32, seed=1)
    for s in ds.samples[:2]:
        save_rgb(s.image, root / f"{s.id}.png")
    (root / "labels.csv").write_text("id,label\n" + "".join(f"{s.id},{s.diagnosis}\n" for s in ds.samples))
    code, _, err = cli(capsys, "data", "check", root)
    assert code == 2
    assert names(err, root / "labels.csv")
    assert ds.samples[2].id in err


def test_data_check_garbage_image(tmp_path, capsys):
    folder = tmp_path / "imgs"
    ds = make_dermoscopy(n=1, size=32, seed=1)
    save_rgb(ds.samples[0].image, folder / "good.png")
    bad = garbage_png(folder / "bad.png")
    code, out, err = cli(capsys, "data", "check", folder)
    assert code == 2
    assert names(out + err, bad)
    assert "1 problem" in err
    assert "good.png" not in out + err
    # and the garbage file given on its own
    code, out, err = cli(capsys, "data", "check", bad)
    assert code == 2
    assert names(out + err, bad)


@pytest.mark.slow
def test_evaluate_classifier_on_unlabelled_images(cls_run, unlabelled, tmp_path, capsys):
    before = snapshot(cls_run)
    target = tmp_path / "m.json"
    code, _, err = cli(capsys, "evaluate", cls_run, unlabelled, "--out", target, "--device", "cpu")
    assert code == 2
    assert names(err, unlabelled)
    assert "labelled" in err
    assert not target.exists()
    assert snapshot(cls_run) == before, "nothing may be written into the run directory"


cuda_missing = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")


@cuda_missing
def test_device_cuda_without_cuda(tmp_path, capsys):
    code, _, err = cli(capsys, "train", UNET_CONFIG, "--out", tmp_path / "run", *UNET_ARGS, "--device", "cuda")
    assert code == 2
    assert "cuda" in err.lower()
    assert "Traceback" not in err


@cuda_missing
@pytest.mark.slow
def test_predict_device_cuda_without_cuda(seg_run, heldout, tmp_path, capsys):
    out = tmp_path / "pred"
    code, _, err = cli(capsys, "predict", seg_run, heldout, "--out", out, "--device", "cuda")
    assert code == 2
    assert "cuda" in err.lower()
    assert not out.exists()


# -- 6. rejected cases are counted, not dropped ----------------------------------------------------


@pytest.mark.slow
def test_predict_counts_rejected_cases(seg_run, heldout, heldout_rect, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    good = []
    for prefix, root, k in (("sq", heldout, 2), ("rect", heldout_rect, 1)):
        for src in sorted((root / "images").glob("*.png"))[:k]:
            shutil.copy(src, folder / f"{prefix}_{src.name}")
            good.append(f"{prefix}_{src.stem}")
    bad = garbage_png(folder / "broken.png")
    out = tmp_path / "pred"
    code, _, err = cli(capsys, "predict", seg_run, folder, "--out", out, "--device", "cpu")
    assert code == 0, err
    _, rows = read_rows(out / "predictions.csv")
    assert sorted(r["id"] for r in rows) == sorted(good)
    assert sorted(p.stem for p in (out / "masks").glob("*.png")) == sorted(good)
    assert re.search(r"\b1 case(\(s\))? rejected", err), err
    assert names(err, bad)
    assert re.search(r"\b3 of 4\b", err), err


# -- 7. data check ---------------------------------------------------------------------------------


def test_data_check_summary(heldout, capsys):
    code, out, err = cli(capsys, "data", "check", heldout)
    assert code == 0, err
    _, rows = read_rows(heldout / "labels.csv")
    counts = {c: sum(r["label"] == c for r in rows) for c in ("benign", "malignant")}
    assert sum(counts.values()) == 12 and min(counts.values()) > 0
    assert re.search(r"^cases\s+12\b", out, re.M), out
    assert f"benign {counts['benign']}" in out
    assert f"malignant {counts['malignant']}" in out
    assert re.search(r"^with mask\s+12\b", out, re.M), out
    assert re.search(r"problems\s+none", out), out


# -- 8. report -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_report_html_and_markdown(seg_run, cls_run, tmp_path, capsys):
    html = tmp_path / "report.html"
    code, _, err = cli(capsys, "report", seg_run, cls_run, "--out", html)
    assert code == 0, err
    text = html.read_text()
    assert seg_run.name in text and cls_run.name in text
    found = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    assert found, "no embedded PNG"
    assert base64.b64decode(found.group(1))[:8] == b"\x89PNG\r\n\x1a\n"

    md = tmp_path / "report.md"
    code, _, err = cli(capsys, "report", seg_run, cls_run, "--out", md)
    assert code == 0, err
    lines = md.read_text().splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert len(table) >= 4, "a header, a rule and one row per run"
    assert re.match(r"^\|[\s:|-]+\|$", table[1]), table[1]
    assert any(seg_run.name in line for line in table[2:])
    assert any(cls_run.name in line for line in table[2:])

    # an existing --out is refused and kept
    before = md.read_bytes()
    code, _, err = cli(capsys, "report", seg_run, cls_run, "--out", md)
    assert code == 2
    assert names(err, md)
    assert md.read_bytes() == before


def test_report_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    notrun = tmp_path / "notrun"
    notrun.mkdir()
    code, _, err = cli(capsys, "report", notrun, "--out", tmp_path / "r.html")
    assert code == 2
    assert names(err, notrun)
    assert not (tmp_path / "r.html").exists()


# -- 9. help ---------------------------------------------------------------------------------------


def test_help(capsys):
    code, out, _ = cli(capsys, "--help")
    assert code == 0
    for command in ("train", "predict", "evaluate", "data", "report"):
        assert command in out
    code, out, _ = cli(capsys, "train", "--help")
    assert code == 0
    for option in ("--data", "--out", "--device", "--seed", "--epochs", "--set"):
        assert option in out


def test_unknown_command_is_usage_error(capsys):
    code, _, err = cli(capsys, "frobnicate")
    assert code == 2
    assert "frobnicate" in err


# -- regressions: bugs found and fixed --------------------------------------------------------------


@pytest.mark.slow
def test_predict_when_every_case_is_rejected(seg_run, tmp_path, capsys):
    folder = tmp_path / "imgs"
    bad = garbage_png(folder / "broken.png")
    code, _, err = cli(capsys, "predict", seg_run, folder, "--out", tmp_path / "pred", "--device", "cpu")
    assert code == 2, err
    assert names(err, bad)


@pytest.mark.slow
def test_evaluate_segmenter_on_unlabelled_images(seg_run, unlabelled, tmp_path, capsys):
    code, _, err = cli(capsys, "evaluate", seg_run, unlabelled, "--out", tmp_path / "m.json", "--device", "cpu")
    assert code == 2, err
    assert names(err, unlabelled)


@pytest.mark.slow
def test_predict_out_is_an_existing_file(seg_run, heldout, tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("keep me")
    code, _, err = cli(capsys, "predict", seg_run, heldout, "--out", target, "--device", "cpu")
    assert code == 2, err
    assert names(err, target)
    assert target.read_text() == "keep me"


@cuda_missing
def test_device_cuda_without_cuda_writes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    code, _, _ = cli(capsys, "train", UNET_CONFIG, "--out", run, *UNET_ARGS, "--device", "cuda")
    assert code == 2
    assert not run.exists()


def test_error_message_keeps_a_long_path_on_one_line(tmp_path, capsys):
    folder = tmp_path / ("a_rather_long_folder_name_" * 4) / "run"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("x")
    code, _, err = cli(capsys, "train", UNET_CONFIG, "--out", folder, *UNET_ARGS)
    assert code == 2
    assert str(folder) in err


# -- issue 17: trust under bad input ----------------------------------------------------------------


def test_an_unknown_model_is_refused_before_the_run_directory_exists(tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", RESNET_CONFIG, "--out", run, *RESNET_ARGS, "--set", "model.name=resnet99")
    assert code == 2 and "model.name: unknown model 'resnet99'" in err and names(err, RESNET_CONFIG)
    code, _, err = cli(capsys, "train", RESNET_CONFIG, "--out", run, *RESNET_ARGS, "--set", "model.options.bogus=1")
    assert code == 2 and "bogus" in err
    assert not run.exists()


@pytest.mark.slow
def test_a_config_error_found_late_never_blocks_the_corrected_command(tmp_path, capsys):
    run = tmp_path / "run"
    # a value only the real build can judge: found after the data was read and the run begun
    code, _, err = cli(capsys, "train", RESNET_CONFIG, "--out", run, *RESNET_ARGS, "--set", "model.options.width=-1")
    assert code == 2 and "model.options for 'resnet18'" in err
    assert not run.exists()  # nothing half-made is left behind
    # an earlier attempt that stopped before any epoch (as the releases before this fix left it)
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"recipe": "classification", "model": {"name": "resnet99"}}))
    (run / "split.json").write_text("{}")
    code, _, err = cli(capsys, "train", RESNET_CONFIG, "--out", run, *RESNET_ARGS, "--epochs", "1")
    assert code == 0, err
    assert RunDir(run).finished_record().finished


@pytest.mark.slow
def test_a_second_train_into_a_run_being_written_is_refused(unfinished_run, capsys):
    """Another live process holds the run's lock: the second command exits 2 naming it and
    touches nothing (before, both wrote the folder and exited 0) (issue 17, item 3)."""
    import socket
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (unfinished_run / "medsight.lock").write_text(json.dumps(
            {"pid": holder.pid, "host": socket.gethostname(), "since": "2026-12-06T12:00:00+00:00"}))
        before = snapshot(unfinished_run)
        code, _, err = cli(capsys, "train", UNET_CONFIG, "--out", unfinished_run, *UNET_ARGS)
        assert code == 2, err
        assert f"pid {holder.pid} on host {socket.gethostname()}" in err and names(err, unfinished_run)
        assert snapshot(unfinished_run) == before
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale, the run resumes and the lock is released at the end
    code, _, err = cli(capsys, "train", UNET_CONFIG, "--out", unfinished_run, *UNET_ARGS)
    assert code == 0, err
    assert not (unfinished_run / "medsight.lock").exists()


# -- an output that cannot be written, damaged run files: exit 2, one message (issue 17, item 5) ------


def _mount_tmpfs(folder: Path, options: str) -> bool:
    import subprocess

    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def _umount(folder: Path) -> None:
    import subprocess

    subprocess.run(["umount", str(folder)], capture_output=True)


@pytest.fixture
def readonly_dir(tmp_path):
    """A folder nobody may write: mode 0555 for a normal user; for root (whom modes do not stop)
    a read-only tmpfs, or a skip saying it could not be made."""
    import os

    folder = tmp_path / "readonly"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
    elif _mount_tmpfs(folder, "ro,size=1m"):
        yield folder
        _umount(folder)
    else:
        pytest.skip("running as root without permission to mount a read-only tmpfs: cannot make a read-only folder")


@pytest.fixture
def full_dir(tmp_path):
    """A folder on a file system with no free space left (a small tmpfs filled up; needs root)."""
    import os

    folder = tmp_path / "full"
    folder.mkdir()
    if os.geteuid() != 0 or not _mount_tmpfs(folder, "size=256k"):
        pytest.skip("a full file system needs a tmpfs mount (root): not available here")
    try:
        with open(folder / "filler", "wb") as fh:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
    except OSError:
        pass
    yield folder
    _umount(folder)


def writing_commands(seg_run, cls_run, heldout, out):
    """Each of the six commands that write, with ``out`` as where it writes."""
    return {
        "train": ["train", RESNET_CONFIG, "--out", out / "run", *RESNET_ARGS],
        "predict": ["predict", seg_run, heldout, "--out", out / "pred", "--device", "cpu"],
        "evaluate": ["evaluate", cls_run, heldout, "--out", out / "metrics.json", "--device", "cpu"],
        "data synth": ["data", "synth", out / "synth", "--n", "4", "--size", "32"],
        "report": ["report", seg_run, cls_run, "--out", out / "report.html"],
        "features": ["features", "shape", heldout, "--out", out / "shape.csv"],
    }


@pytest.mark.slow
def test_a_read_only_out_is_one_message(seg_run, cls_run, heldout, readonly_dir, capsys):
    for command, args in writing_commands(seg_run, cls_run, heldout, readonly_dir).items():
        code, _, err = cli(capsys, *args)
        assert code == 2, (command, err)
        assert "Traceback" not in err and names(err, readonly_dir), (command, err)


@pytest.mark.slow
def test_a_full_disk_is_one_message_and_leaves_nothing(seg_run, cls_run, heldout, full_dir, capsys):
    for command, args in writing_commands(seg_run, cls_run, heldout, full_dir).items():
        code, _, err = cli(capsys, *args)
        assert code == 2, (command, err)
        assert "Traceback" not in err and names(err, full_dir), (command, err)
        assert sorted(p.name for p in full_dir.iterdir()) == ["filler"], command


def test_a_damaged_checkpoint_says_what_it_is_and_how_to_start_over(tmp_path):
    import pickle

    from medsight.engine.checkpoint import load_state
    from medsight.errors import InputError

    garbage, planted = tmp_path / "garbage" / "checkpoint.pt", tmp_path / "planted" / "checkpoint.pt"
    garbage.parent.mkdir()
    planted.parent.mkdir()
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    planted.write_bytes(pickle.dumps({"epoch": 1, "f": complex}))  # a pickle of more than tensors
    for path in (garbage, planted):
        with pytest.raises(InputError) as info:
            load_state(path)
        message = str(info.value)
        assert message.startswith(str(path)) and "not a medsight checkpoint" in message
        assert "weights_only" not in message and "delete checkpoint.pt" in message


@pytest.mark.slow
def test_train_on_a_damaged_checkpoint(unfinished_run, capsys):
    saved = RunDir(unfinished_run)
    record = saved.read_record()
    saved.write_record(record.with_stage("network", dataclasses.replace(record.stage("network"), finished=False)))
    (unfinished_run / "checkpoint.pt").write_bytes(b"\x80\x04garbage")
    code, _, err = cli(capsys, "train", UNET_CONFIG, "--out", unfinished_run, *UNET_ARGS)
    assert code == 2 and "not a medsight checkpoint" in err and "weights_only" not in err, err


@pytest.mark.parametrize("text", ["- a list\n- of items\n", "recipe: [unclosed\n"], ids=["list", "not-yaml"])
def test_a_run_config_that_is_not_a_mapping(cls_run, heldout, tmp_path, capsys, text):
    run = tmp_path / "run"
    shutil.copytree(cls_run, run)
    (run / "config.yaml").write_text(text)
    code, _, err = cli(capsys, "predict", run, heldout, "--out", tmp_path / "pred", "--device", "cpu")
    assert code == 2 and names(err, run / "config.yaml") and "Traceback" not in err, err
    saved = RunDir(run)
    saved.write_record(dataclasses.replace(saved.read_record(), finished=False))
    code, _, err = cli(capsys, "train", RESNET_CONFIG, "--out", run, *RESNET_ARGS)
    assert code == 2 and names(err, run / "config.yaml") and "Traceback" not in err, err


# -- where rejected cases and cases seen in training are written (issue 17, item 8) ----------------


@pytest.mark.slow
def test_predict_writes_the_rejected_cases(seg_run, heldout, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for src in sorted((heldout / "images").glob("*.png"))[:2]:
        shutil.copy(src, folder / src.name)
    bad = garbage_png(folder / "broken.png")
    out = tmp_path / "pred"
    code, _, err = cli(capsys, "predict", seg_run, folder, "--out", out, "--device", "cpu")
    assert code == 0, err
    header, rows = read_rows(out / "rejected.csv")
    assert header == ["id", "path", "reason"]
    assert [(r["id"], r["path"]) for r in rows] == [("broken", str(bad))] and rows[0]["reason"], rows
    # none rejected: the file is there, header only
    out2 = tmp_path / "pred2"
    assert cli(capsys, "predict", seg_run, heldout, "--out", out2, "--device", "cpu")[0] == 0
    assert read_rows(out2 / "rejected.csv") == (["id", "path", "reason"], [])


@pytest.fixture
def run_trained_on_heldout(cls_run, heldout, tmp_path) -> Path:
    """A copy of the classifier run whose record says it was trained on ``heldout``: 5 of its cases
    in the training split, 2 in the validation split."""
    run = tmp_path / "run"
    shutil.copytree(cls_run, run)
    saved = RunDir(run)
    record = saved.read_record()
    saved.write_record(dataclasses.replace(record, data=dataclasses.replace(record.data, root=str(heldout))))
    ids = sorted(p.stem for p in (heldout / "images").glob("*.png"))
    saved.write_split({"train": ids[:5], "val": ids[5:7], "heldout": []})
    return run


@pytest.mark.slow
def test_evaluate_records_the_cases_used_in_training_and_report_shows_it(run_trained_on_heldout, heldout,
                                                                           tmp_path, capsys):
    run = run_trained_on_heldout
    code, _, err = cli(capsys, "evaluate", run, heldout, "--device", "cpu")
    assert code == 0, err
    assert "5 were used to train" in err and "2 to validate" in err, err
    evaluation = json.loads((run / f"evaluation_{heldout.name}.json").read_text())
    assert evaluation["n"] == 12 and evaluation["used_in_training"] == {"train": 5, "val": 2}
    code, _, err = cli(capsys, "report", run, "--out", tmp_path / "report.md")
    assert code == 0, err
    assert f"({heldout.name}, 7 of 12 cases used in training)" in (tmp_path / "report.md").read_text()


# -- evaluate maps the data's labels onto the run's classes, and says how (issue 17, item 1) --------


@pytest.fixture
def ph2_melanoma_run(cls_run, tmp_path) -> Path:
    """The tiny classifier run, its record saying it learnt PH2's melanoma task (classes nevus /
    melanoma, from the labels common_nevus, atypical_nevus, melanoma)."""
    from medsight.data.ph2 import TASKS

    run = tmp_path / "ph2_run"
    shutil.copytree(cls_run, run)
    saved = RunDir(run)
    saved.write_record(dataclasses.replace(saved.read_record(), task=TASKS["melanoma"]))
    return run


@pytest.mark.slow
def test_evaluate_labels_spelled_as_the_runs_classes(ph2_melanoma_run, heldout, tmp_path, capsys):
    data = tmp_path / "named"
    shutil.copytree(heldout, data)
    labels = data / "labels.csv"
    labels.write_text(labels.read_text().replace(",benign,", ",nevus,").replace(",malignant,", ",melanoma,"))
    code, _, err = cli(capsys, "evaluate", ph2_melanoma_run, data, "--out", tmp_path / "m.json", "--device", "cpu")
    assert code == 0, err
    assert "class names: " in err and "melanoma -> melanoma" in err, err
    result = json.loads((tmp_path / "m.json").read_text())
    assert result["n"] == 12 and result["labels"] == {"rule": "class names",
                                                      "mapping": {"melanoma": "melanoma", "nevus": "nevus"}}


def write_isic2017(root: Path, n: int = 9) -> Path:
    """A small ISIC-2017 validation set: nevus, melanoma and seborrheic keratosis in turn."""
    from medsight.data.synthetic import make_dermoscopy

    folder = root / "ISIC-2017_Validation_Data"
    folder.mkdir(parents=True)
    rows = ["image_id,melanoma,seborrheic_keratosis"]
    for i, sample in enumerate(make_dermoscopy(n=n, size=40, seed=7).samples):
        Image.fromarray(np.ascontiguousarray(sample.image.transpose(1, 2, 0))).save(folder / f"ISIC_{i:07d}.jpg")
        rows.append(f"ISIC_{i:07d},{float(i % 3 == 1)},{float(i % 3 == 2)}")
    (root / "ISIC-2017_Validation_Part3_GroundTruth.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.mark.slow
def test_evaluate_isic2017_with_a_ph2_melanoma_run(ph2_melanoma_run, tmp_path, capsys):
    data = write_isic2017(tmp_path / "isic")
    code, out, err = cli(capsys, "evaluate", ph2_melanoma_run, data, "--out", tmp_path / "m.json", "--device", "cpu")
    assert code == 0, err
    assert "isic2017 task 'melanoma'" in err and "nevus, seborrheic_keratosis -> nevus" in err, err
    result = json.loads((tmp_path / "m.json").read_text())
    assert result["n"] == 9 and result["labels"]["rule"] == "dataset task"
    assert result["labels"]["mapping"] == {"melanoma": "melanoma", "nevus": "nevus", "seborrheic_keratosis": "nevus"}


@pytest.mark.slow
def test_evaluate_real_isic2017_with_a_ph2_melanoma_run(ph2_melanoma_run, isic2017, tmp_path, capsys):
    code, _, err = cli(capsys, "evaluate", ph2_melanoma_run, isic2017, "--split", "val", "--out", tmp_path / "m.json",
                       "--device", "cpu")
    assert code == 0, err
    result = json.loads((tmp_path / "m.json").read_text())
    assert result["n"] == 150 and result["labels"]["mapping"]["seborrheic_keratosis"] == "nevus"


# -- the run records what it was trained on; predict warns once on unlike input (issue 17, item 2) --


@pytest.mark.slow
def test_predict_warns_once_on_input_unlike_the_training_data(cls_run, heldout, tmp_path, capsys):
    record = json.loads((cls_run / "run.json").read_text())["input"]
    assert record["formats"] == [] and record["sizes"] == [[48, 48], [48, 48]]  # generated arrays, 48 px
    assert len(record["image_mean"]) == 3 and all(0 <= lo <= hi <= 1 for lo, hi in record["image_mean"])
    code, _, err = cli(capsys, "predict", cls_run, heldout, "--out", tmp_path / "alike", "--device", "cpu")
    assert code == 0 and "look unlike" not in err, err
    negative = tmp_path / "negative" / "images"
    negative.mkdir(parents=True)
    for src in sorted((heldout / "images").glob("*.png")):
        Image.fromarray(255 - np.asarray(Image.open(src).convert("RGB"))).save(negative / src.name)
    code, _, err = cli(capsys, "predict", cls_run, negative, "--out", tmp_path / "unlike", "--device", "cpu")
    assert code == 0, err  # a warning, never a refusal
    assert err.count("look unlike the data the run was trained on") == 1, err
    assert "12 of 12 images with colour or intensity statistics outside" in err
    assert len(read_rows(tmp_path / "unlike" / "predictions.csv")[1]) == 12

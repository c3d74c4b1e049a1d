"""The LIDC image baselines (3D ResNet on the nodule crop, the multi-view CNN) end to end through
the command line, on nodule VOIs written by builders.write_vois."""

import pytest

from medsight.cli import main

from builders import CONFIGS, write_vois


@pytest.mark.slow
@pytest.mark.parametrize("config,extra", [
    ("lidc_voi_resnet3d.yaml", ["--set", "model.options.width=8", "--set", "data.image_size=[8,16,16]"]),
    ("lidc_voi_multiview.yaml", ["--set", "model.options.width=8", "--set", "data.image_size=[24,24]"]),
])
def test_lidc_baselines_train_predict_evaluate(tmp_path, capsys, config, extra):
    data = write_vois(tmp_path / "vois")
    run = tmp_path / "run"
    args = ["--data", str(data), "--out", str(run), "--epochs", "2", "--device", "cpu",
            "--set", "data.folds=3", "--set", "data.fold=0", "--set", "data.val_fraction=0.3", *extra]
    assert main(["train", str(CONFIGS / config), *args]) == 0
    assert main(["predict", str(run), str(data), "--out", str(tmp_path / "pred"), "--device", "cpu"]) == 0
    lines = (tmp_path / "pred" / "predictions.csv").read_text().splitlines()
    assert lines[0] == "id,p_malignant,pred" and len(lines) == 25
    capsys.readouterr()
    assert main(["evaluate", str(run), str(data), "--split", "heldout", "--out", str(tmp_path / "m.json")]) == 0
    table = capsys.readouterr().out
    assert "AUC" in table and "SEN" in table and "SPE" in table

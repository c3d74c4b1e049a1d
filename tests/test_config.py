"""Config validation: typed values, unknown keys named, overrides parsed as YAML and never evaluated."""

import pytest

from medsight.config import apply_override
from medsight.errors import ConfigError
from medsight.recipes import RECIPES, load_config, parse_config

from builders import CONFIGS

BASE = "recipe: segmentation\nmodel: {name: unet}\ntrain: {epochs: 5}\n"


def write(tmp_path, text=BASE):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_and_types(tmp_path):
    cfg = load_config(write(tmp_path))
    assert cfg.train.epochs == 5 and cfg.train.batch_size == 16 and cfg.data.image_size == (128, 128)


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.epoch: unknown key"):
        load_config(write(tmp_path, BASE.replace("epochs", "epoch")))


def test_bad_value_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.lr"):
        load_config(write(tmp_path), ["train.lr=-1"])
    with pytest.raises(ConfigError, match=r"recipe"):
        parse_config({"recipe": "nonsense", "model": {"name": "unet"}})


def test_overrides_and_flags(tmp_path):
    cfg = load_config(write(tmp_path), ["train.lr=0.01", "augment.scale=[0.9, 1.1]", "data.options.n=7"],
                      epochs=2, data="/some/where", seed=9)
    assert cfg.train.lr == 0.01 and cfg.augment.scale == (0.9, 1.1) and cfg.data.options == {"n": 7}
    assert cfg.train.epochs == 2 and cfg.data.root == "/some/where" and cfg.seed == 9


def test_epochs_flag_is_validated(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_config(write(tmp_path), epochs=0)


def test_override_values_are_not_evaluated():
    raw = {}
    apply_override(raw, "model.name=__import__('os').system('false')")
    assert raw == {"model": {"name": "__import__('os').system('false')"}}
    with pytest.raises(ConfigError, match="key=value"):
        apply_override(raw, "train.lr")
    with pytest.raises(ConfigError, match="not a section"):
        apply_override({"train": 3}, "train.lr=1")


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "recipe: [unclosed\n"))


def test_shipped_configs_are_valid():
    configs = sorted(CONFIGS.glob("*.yaml"))
    assert configs
    for path in configs:
        cfg = load_config(path)
        assert "Time:" in path.read_text(), f"{path.name} must say how long it takes"
        if "train" in RECIPES[cfg.recipe].Config.model_fields:  # a recipe that trains a network
            assert cfg.train.epochs >= 1
        else:
            assert not hasattr(cfg, "train"), path.name


def test_each_recipe_takes_only_its_own_sections(tmp_path):
    descriptors = "recipe: descriptors\nfeatures: {glcm: {bin_count: 8}}\n"
    assert load_config(write(tmp_path, descriptors)).recipe == "descriptors"
    for section in ("model: {name: resnet18}", "train: {epochs: 2}", "augment: {hflip: true}"):
        with pytest.raises(ConfigError, match=rf"{section.split(':')[0]}: unknown key"):
            load_config(write(tmp_path, descriptors + section + "\n"))
    with pytest.raises(ConfigError, match="--epochs: the descriptors recipe trains no network"):
        load_config(write(tmp_path, descriptors), epochs=3)


def test_weight_averages_and_validation_sources(tmp_path):
    cfg = load_config(write(tmp_path))
    assert (cfg.train.weight_average, cfg.data.val_source, cfg.data.val_fold) == ("none", "official", 0)
    swa = load_config(write(tmp_path), ["train.weight_average=swa", "train.swa_epochs=3", "data.val_source=train"])
    assert (swa.train.weight_average, swa.train.swa_epochs, swa.data.val_source) == ("swa", 3, "train")
    with pytest.raises(ConfigError, match=r"train: weight_average: swa .* early_stopping does not apply"):
        load_config(write(tmp_path), ["train.weight_average=swa", "train.early_stopping={metric: JA}"])
    with pytest.raises(ConfigError, match=r"train\.weight_average"):
        load_config(write(tmp_path), ["train.weight_average=mean"])
    with pytest.raises(ConfigError, match=r"data\.val_source"):
        load_config(write(tmp_path), ["data.val_source=test"])
    with pytest.raises(ConfigError, match=r"train\.ema_decay"):
        load_config(write(tmp_path), ["train.weight_average=ema", "train.ema_decay=1.5"])

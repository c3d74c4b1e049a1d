"""MK-AAE (semi.algorithm: aae): the categorical prior's draws, each loss's gradient reaches what it
trains and nothing else (the unlabelled nodules included), with both weights 0 and no unlabelled
nodules a step is MV-KBC's step, resume within an epoch is exact, and train / predict / evaluate
through the CLI."""

import pytest
import torch
from safetensors.torch import load_file

from medsight.cli import main
from medsight.engine.checkpoint import load_state
from medsight.errors import ConfigError
from medsight.models import create_model
from medsight.models.mvkbc import MVKBC
from medsight.recipes import load_config, load_recipe, recipe_for
from medsight.recipes.mvkbc import MVKBCOptions, MVKBCStep
from medsight.recipes.semi_aae import AAEOptions, AAEStep, aae_parts, one_hot_draw
from medsight.rundir import RunDir

from builders import CONFIGS, write_vois
from test_semi_ssac import Record, batches, grads


def parts(options=AAEOptions(latent=3, channels=[4, 8], discriminator_hidden=8)):
    torch.manual_seed(0)
    model = create_model("mvkbc", in_channels=27, backbone="resnet14", hidden=(8, 4), width=4, share_views=True)
    return (model, *aae_parts(model, (24, 24), options), options)


def step_of(model, autoencoder, discriminators, options):
    return AAEStep(model, autoencoder, discriminators, MVKBCOptions(), options, None, class_prior=0.3)


def test_the_categorical_prior_draws_one_hot_rows_at_its_rate():
    torch.manual_seed(0)
    y = one_hot_draw(0.3)(torch.zeros(20000, 2))
    assert torch.equal(y.sum(1), torch.ones(20000)) and set(y.flatten().tolist()) == {0.0, 1.0}
    assert y[:, 1].mean().item() == pytest.approx(0.3, abs=0.01)


def test_each_loss_trains_what_it_should_and_the_unlabelled_nodules_take_part():
    model, autoencoder, discriminators, options = parts()
    lb, ulb = batches()
    ctx = Record()
    out = step_of(model, autoencoder, discriminators, options).train_step({"lb": lb, "ulb": ulb}, ctx)
    (d_names, disc), (names, _) = ctx.updates
    assert d_names == ("discriminator",) and names == ("model", "autoencoder")
    backbone = [model.streams[0].backbone.conv1.weight, model.streams[0].head[0].weight]
    fused = [*model.kbc.parameters(), *model.fusion.parameters()]
    style, decoders = list(autoencoder["style"].parameters()), list(autoencoder["decoders"].parameters())
    d = list(discriminators.parameters())
    assert grads(disc, d[-2:])[0] > 0 and not any(grads(disc, list(model.parameters()) + style + decoders))
    rec, gen, sup = out["rec_loss"], out["gen_loss"], out["sup_loss"]
    assert all(g > 0 for g in grads(rec, backbone + style[:1] + decoders[:1]))
    assert not any(grads(rec, fused + d))  # the KBC layers and the view weighting: the labelled loss's alone
    assert all(g > 0 for g in grads(gen, backbone + style[:1])) and not any(grads(gen, fused + decoders))
    assert all(g > 0 for g in grads(sup, backbone + fused[-2:])) and not any(grads(sup, style + decoders + d))
    for loss in (rec, gen):  # (the labelled loss sees them only through BatchNorm's batch statistics)
        assert torch.autograd.grad(loss, ulb["weak"], retain_graph=True)[0].abs().sum() > 0


def test_with_no_weights_and_no_unlabelled_nodules_a_step_is_mvkbcs():
    lb, _ = batches()
    model, autoencoder, discriminators, _ = parts()
    zero = AAEOptions(latent=3, channels=[4, 8], discriminator_hidden=8, rec_weight=0, adv_weight=0)
    want, got = Record(), Record()
    torch.manual_seed(5)
    MVKBCStep(model, MVKBCOptions(), None).train_step(dict(lb), want)
    torch.manual_seed(5)
    step_of(model, autoencoder, discriminators, zero).train_step({"lb": lb, "ulb": None}, got)
    a, b = want.updates[0][1], got.updates[1][1]
    assert a.item() == b.item()
    assert grads(a, model.parameters()) == grads(b, model.parameters())


def test_the_config_states_its_defaults_and_refuses_the_usb_weight():
    cfg = load_config(CONFIGS / "lidc_voi_semi_aae.yaml")
    assert cfg.semi.algorithm == "aae" and cfg.aae == AAEOptions()
    with pytest.raises(ConfigError, match="unsup_weight"):
        load_config(CONFIGS / "lidc_voi_semi_aae.yaml", ["semi.unsup_weight=1"])


OVERRIDES = ["data.folds=3", "data.fold=0", "data.val_fraction=0.3", "data.image_size=[24,24]",
             "model.options.width=4", "model.options.hidden=[8,4]", "aae.channels=[4,8]", "aae.latent=3",
             "aae.discriminator_hidden=8", "data.labelled_fraction=0.5"]


class Stop(Exception):
    pass


@pytest.mark.slow
def test_aae_resumes_within_an_epoch_to_the_same_weights(tmp_path, monkeypatch):
    data = write_vois(tmp_path / "vois", n_patients=9)
    overrides = OVERRIDES + ["train.batch_size=2", "train.checkpoint_every=1"]
    cfg = load_config(CONFIGS / "lidc_voi_semi_aae.yaml", overrides, epochs=2, data=str(data))
    recipe_for(cfg).train(RunDir(tmp_path / "full"), "cpu")
    original = AAEStep.train_step

    def interrupted(self, batch, ctx):
        if ctx.step == 3:  # the second step of epoch 2, after a checkpoint after its first
            raise Stop
        return original(self, batch, ctx)

    monkeypatch.setattr(AAEStep, "train_step", interrupted)
    with pytest.raises(Stop):
        recipe_for(cfg).train(RunDir(tmp_path / "cut"), "cpu")
    assert load_state(tmp_path / "cut" / "checkpoint.pt")["loop"]["in_epoch"]["done"] == 1
    monkeypatch.setattr(AAEStep, "train_step", original)
    recipe_for(cfg).train(RunDir(tmp_path / "cut"), "cpu")
    for name in ("model", "autoencoder", "discriminator"):
        a, b = load_file(tmp_path / "full" / f"{name}.safetensors"), load_file(tmp_path / "cut" / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


@pytest.mark.slow
def test_aae_trains_predicts_and_evaluates_through_the_cli(tmp_path):
    data = write_vois(tmp_path / "vois", n_patients=9)
    run = tmp_path / "run"
    assert main(["train", str(CONFIGS / "lidc_voi_semi_aae.yaml"), "--data", str(data), "--out", str(run),
                 "--epochs", "2", "--device", "cpu", "--set", "train.batch_size=4",
                 *[a for s in OVERRIDES for a in ("--set", s)]]) == 0
    history = (run / "history.csv").read_text().splitlines()[0].split(",")
    assert {"sup_loss", "rec_loss", "gen_loss", "disc_loss"} <= set(history)
    assert main(["predict", str(run), str(data), "--out", str(tmp_path / "pred"), "--device", "cpu"]) == 0
    assert len((tmp_path / "pred" / "predictions.csv").read_text().splitlines()) == 19
    assert main(["evaluate", str(run), str(data), "--split", "heldout", "--out", str(tmp_path / "m.json")]) == 0
    assert isinstance(load_recipe(run, "cpu").model_, MVKBC)  # prediction is the MV-KBC network's

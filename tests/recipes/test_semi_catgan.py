"""MK-CatGAN (semi.algorithm: catgan): the entropies by hand, the classifier's terms train the
classifier (from the unlabelled nodules too) and not the generator, the generator's train it,
generated nodules leave BatchNorm's running statistics alone, with weight 0 and no unlabelled
nodules the classifier's step is MV-KBC's, resume within an epoch is exact, and the CLI."""

import math

import pytest
import torch
from safetensors.torch import load_file

from medsight.cli import main
from medsight.engine.checkpoint import load_state
from medsight.errors import ConfigError
from medsight.models import create_model
from medsight.recipes import load_config, recipe_for
from medsight.recipes.mvkbc import MVKBCOptions, MVKBCStep
from medsight.recipes.semi_catgan import (CatGANOptions, CatGANStep, classifier_unsup_loss, conditional_entropy,
                                          generator_for, generator_loss, marginal_entropy, prior_cross_entropy)
from medsight.rundir import RunDir

from builders import CONFIGS, write_vois
from test_semi_ssac import Record, batches, grads

OPTIONS = CatGANOptions(latent=4, channels=[4, 8])


def parts(options=OPTIONS):
    torch.manual_seed(0)
    model = create_model("mvkbc", in_channels=27, backbone="resnet14", hidden=(8, 4), width=4, share_views=True)
    return model, generator_for(model, (24, 24), options)


def h(p):
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def test_the_entropies_by_hand():
    z = torch.tensor([0.0, 2.0, -1.0])
    p = torch.sigmoid(z).tolist()
    assert conditional_entropy(z).item() == pytest.approx(sum(h(q) for q in p) / 3, rel=1e-6)
    assert marginal_entropy(z).item() == pytest.approx(h(sum(p) / 3), rel=1e-6)
    q = sum(p) / 3
    assert prior_cross_entropy(z, 0.3).item() == pytest.approx(-(0.3 * math.log(q) + 0.7 * math.log(1 - q)), rel=1e-6)
    assert conditional_entropy(torch.tensor([40.0, -40.0])).item() == pytest.approx(0.0, abs=1e-12)
    real, fake = torch.tensor([3.0, -3.0]), torch.tensor([0.0])  # confident and spread on data, unsure on fakes:
    assert classifier_unsup_loss(real, fake).item() == pytest.approx(-math.log(2) + h(torch.sigmoid(real[0]).item())
                                                                     - math.log(2), rel=1e-6)
    assert generator_loss(torch.tensor([5.0, -5.0])).item() < generator_loss(torch.tensor([5.0, 5.0])).item()


def test_the_classifier_and_the_generator_each_learn_from_their_own_loss():
    model, generator = parts()
    lb, ulb = batches()
    ctx = Record()
    out = CatGANStep(model, generator, MVKBCOptions(), OPTIONS, None, 0.3).train_step({"lb": lb, "ulb": ulb}, ctx)
    (c_names, c_loss), (g_names, g_loss) = ctx.updates
    assert c_names == ("model",) and g_names == ("generator",)
    g_params, c_params = list(generator.parameters()), [model.fusion.weight, model.streams[0].backbone.conv1.weight]
    assert not any(grads(c_loss, g_params))  # the generated nodules are constants to the classifier
    assert all(g > 0 for g in grads(out["unsup_loss"], c_params))
    assert torch.autograd.grad(out["unsup_loss"], ulb["weak"], retain_graph=True)[0].abs().sum() > 0
    assert all(g > 0 for g in grads(g_loss, [g_params[0], g_params[-1]]))


def test_generated_nodules_leave_the_running_statistics_alone():
    model, generator = parts()
    lb, ulb = batches()
    twin = parts()[0]
    twin.train()(torch.cat([lb["x"], ulb["weak"].detach()]))  # the real nodules' pass alone
    CatGANStep(model, generator, MVKBCOptions(), OPTIONS, None).train_step({"lb": lb, "ulb": ulb}, Record())
    for (name, a), b in zip(model.named_buffers(), twin.buffers()):
        assert torch.equal(a, b), name


def test_with_weight_0_and_no_unlabelled_nodules_the_classifiers_step_is_mvkbcs():
    lb, _ = batches()
    model, generator = parts()
    want, got = Record(), Record()
    torch.manual_seed(5)
    MVKBCStep(model, MVKBCOptions(), None).train_step(dict(lb), want)
    torch.manual_seed(5)
    options = CatGANOptions(latent=4, channels=[4, 8], unsup_weight=0)
    CatGANStep(model, generator, MVKBCOptions(), options, None).train_step({"lb": lb, "ulb": None}, got)
    a, b = want.updates[0][1], got.updates[0][1]
    assert a.item() == b.item() and grads(a, model.parameters()) == grads(b, model.parameters())


def test_the_config_states_its_defaults_and_refuses_what_it_cannot_do():
    cfg = load_config(CONFIGS / "lidc_voi_semi_catgan.yaml")
    assert cfg.semi.algorithm == "catgan" and cfg.catgan == CatGANOptions()
    with pytest.raises(ConfigError, match="size"):
        load_config(CONFIGS / "lidc_voi_semi_catgan.yaml", ["mvkbc.size_input=true"])
    with pytest.raises(ConfigError, match="unsup_weight"):
        load_config(CONFIGS / "lidc_voi_semi_catgan.yaml", ["semi.unsup_weight=1"])


OVERRIDES = ["data.folds=3", "data.fold=0", "data.val_fraction=0.3", "data.image_size=[24,24]",
             "model.options.width=4", "model.options.hidden=[8,4]", "catgan.channels=[4,8]", "catgan.latent=4",
             "data.labelled_fraction=0.5"]


class Stop(Exception):
    pass


@pytest.mark.slow
def test_catgan_resumes_within_an_epoch_and_runs_through_the_cli(tmp_path, monkeypatch):
    data = write_vois(tmp_path / "vois", n_patients=9)
    cfg = load_config(CONFIGS / "lidc_voi_semi_catgan.yaml", OVERRIDES + ["train.batch_size=2",
                                                                          "train.checkpoint_every=1"],
                      epochs=2, data=str(data))
    recipe_for(cfg).train(RunDir(tmp_path / "full"), "cpu")
    original = CatGANStep.train_step

    def interrupted(self, batch, ctx):
        if ctx.step == 3:  # the second step of epoch 2, after a checkpoint after its first
            raise Stop
        return original(self, batch, ctx)

    monkeypatch.setattr(CatGANStep, "train_step", interrupted)
    with pytest.raises(Stop):
        recipe_for(cfg).train(RunDir(tmp_path / "cut"), "cpu")
    assert load_state(tmp_path / "cut" / "checkpoint.pt")["loop"]["in_epoch"]["done"] == 1
    monkeypatch.setattr(CatGANStep, "train_step", original)
    recipe_for(cfg).train(RunDir(tmp_path / "cut"), "cpu")
    for name in ("model", "generator"):
        a, b = load_file(tmp_path / "full" / f"{name}.safetensors"), load_file(tmp_path / "cut" / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    run = tmp_path / "cli"
    assert main(["train", str(CONFIGS / "lidc_voi_semi_catgan.yaml"), "--data", str(data), "--out", str(run),
                 "--epochs", "2", "--device", "cpu", "--set", "train.batch_size=4",
                 *[a for s in OVERRIDES for a in ("--set", s)]]) == 0
    assert {"unsup_loss", "g_loss", "p_fake"} <= set((run / "history.csv").read_text().splitlines()[0].split(","))
    assert main(["predict", str(run), str(data), "--out", str(tmp_path / "pred"), "--device", "cpu"]) == 0
    assert main(["evaluate", str(run), str(data), "--split", "heldout", "--out", str(tmp_path / "m.json")]) == 0

"""MK-SSAC (semi.algorithm: ssac): the untrained network is its MV-KBC classifier, each loss's
gradient reaches what it trains and nothing else (the unlabelled nodules included), without
unlabelled nodules each step is its labelled-only form and C's step MV-KBC's, the options refuse
what cannot train, resume within either stage is exact, and train / predict / evaluate through the CLI."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from medsight.cli import main
from medsight.data import open_dataset
from medsight.engine.checkpoint import load_state
from medsight.errors import ConfigError
from medsight.models import create_model
from medsight.models.ssac import SSACNet, reconstruction_parts, stage_sizes
from medsight.recipes import load_config, load_recipe, recipe_for
from medsight.recipes.mvkbc import MVKBCOptions, MVKBCStep
from medsight.recipes.semi_ssac import (AutoencoderStep, SSACOptions, SSACStep, discriminator_loss, generator_loss,
                                        reconstruction_loss)
from medsight.rundir import RunDir

from builders import CONFIGS, write_vois

CPU = torch.device("cpu")


class Record:
    """A step context that keeps each update's loss and optimiser names (the test takes the gradients)."""

    device, epoch, step = CPU, 1, 0

    def __init__(self):
        self.updates = []

    def update(self, loss, *names):
        self.updates.append((names, loss))


def parts(share_views=True, transition_init="zero"):
    torch.manual_seed(0)
    classifier = create_model("mvkbc", in_channels=27, backbone="resnet14", hidden=(8, 4), width=4,
                              share_views=share_views)
    net = SSACNet(classifier, (24, 24), (4, 4, 8, 8), latent=6, transition_init=transition_init)
    return (net, *reconstruction_parts(net, 8))


def batches(n_lb=4, n_ulb=6):
    torch.manual_seed(1)
    lb = {"x": torch.randn(n_lb, 27, 24, 24), "mask": None, "y": torch.tensor([0, 1] * (n_lb // 2))}
    ulb = {"weak": torch.randn(n_ulb, 27, 24, 24, requires_grad=True), "mask": None, "y": torch.full((n_ulb,), -1)}
    return lb, ulb


def grads(loss, params):
    """Per parameter the gradient's absolute sum, 0 where the loss does not reach it."""
    out = torch.autograd.grad(loss, list(params), allow_unused=True, retain_graph=True)
    return [0.0 if g is None else g.abs().sum().item() for g in out]


def test_stage_sizes_and_reconstruction_shapes():
    assert stage_sizes((40, 40), 4) == [(20, 20), (10, 10), (5, 5), (3, 3)]
    net, decoders, discriminators = parts(share_views=False)
    x = torch.randn(2, 27, 24, 24)
    encoded = net.encode(x)
    assert len(encoded) == 27 and encoded[0][1].shape == (2, 6)
    assert decoders[0](encoded[0][1]).shape == (2, 1, 24, 24) and discriminators[0](encoded[0][1]).shape == (2,)


@pytest.mark.parametrize("share_views", [True, False])
def test_zero_transitions_make_the_untrained_network_its_mvkbc(share_views):
    net = parts(share_views)[0].eval()
    x = torch.randn(3, 27, 24, 24)
    assert torch.equal(net(x), net.classifier(x))
    with torch.no_grad():  # a transition that is not zero changes the output
        net.transitions[0].convs[2].bias.fill_(1.0)
    assert not torch.allclose(net(x), net.classifier(x))


def test_the_losses_by_hand():
    class Fixed(torch.nn.Module):  # D(z) = the first coordinate
        def forward(self, z):
            return z[:, 0]

    codes = [torch.tensor([[0.5, 1.0], [-1.0, 2.0]])]
    want = F.binary_cross_entropy_with_logits(torch.tensor([0.5, -1.0]), torch.ones(2))
    assert generator_loss([Fixed()], codes).item() == pytest.approx(want.item())
    torch.manual_seed(3)
    prior = torch.randn(2, 2)
    torch.manual_seed(3)
    d = discriminator_loss([Fixed()], codes)
    want = (F.binary_cross_entropy_with_logits(prior[:, 0], torch.ones(2))
            + F.binary_cross_entropy_with_logits(torch.tensor([0.5, -1.0]), torch.zeros(2))) / 2
    assert d.item() == pytest.approx(want.item())
    identity = [torch.nn.Identity()]
    x = torch.ones(2, 1, 2, 2)
    assert reconstruction_loss(identity, [(None, torch.zeros(2, 1, 2, 2))], [x]).item() == 1.0


def test_rs_losses_train_r_alone_and_learn_from_the_unlabelled_nodules():
    net, decoders, discriminators = parts()
    lb, ulb = batches()
    ctx = Record()
    out = AutoencoderStep(net, decoders, discriminators, SSACOptions()).train_step({"lb": lb, "ulb": ulb}, ctx)
    (d_names, d_loss), (r_names, _) = ctx.updates
    assert d_names == ("discriminator",) and r_names == ("autoencoder",)
    encoders, c = list(net.encoders.parameters()), net.classifier_parameters()
    dec, disc = list(decoders.parameters()), list(discriminators.parameters())
    assert all(g > 0 for g in grads(d_loss, disc[-2:]))  # the discriminators' last layers
    assert not any(grads(d_loss, encoders + dec + c))  # the codes are detached
    rec, gen = out["rec_loss"], out["gen_loss"]
    assert rec.item() > 0 and gen.item() > 0
    assert all(g > 0 for g in grads(rec, [encoders[0], dec[0], dec[-1]]))
    assert not any(grads(rec, c + disc))
    assert grads(gen, [encoders[0]])[0] > 0 and not any(grads(gen, dec + c))
    for loss in (rec, gen):  # the unlabelled nodules take part
        assert torch.autograd.grad(loss, ulb["weak"], retain_graph=True)[0].abs().sum() > 0


def test_in_the_joint_stage_the_classification_loss_trains_c_and_the_transitions_not_r():
    net, decoders, discriminators = parts()
    lb, ulb = batches()
    ctx = Record()
    step = SSACStep(net, decoders, discriminators, MVKBCOptions(), SSACOptions(r_during_c="train"), None)
    out = step.train_step({"lb": lb, "ulb": ulb}, ctx)
    assert [names for names, _ in ctx.updates] == [("discriminator",), ("autoencoder", "classifier")]
    sup = out["sup_loss"]
    transitions = list(net.transitions.parameters())
    assert all(g > 0 for g in grads(sup, [net.classifier.fusion.weight, net.classifier.streams[0].backbone.conv1.weight,
                                          *transitions[:2]]))
    assert not any(grads(sup, [*net.encoders.parameters(), *decoders.parameters(), *discriminators.parameters()]))
    assert torch.autograd.grad(sup, ulb["weak"], allow_unused=True, retain_graph=True)[0] is None
    assert not any(grads(ctx.updates[0][1], net.classifier_parameters()))  # the discriminator's loss: not C's


def test_grad_to_r_lets_the_classification_loss_reach_rs_encoder():
    net, decoders, discriminators = parts(transition_init="default")
    lb, ulb = batches()
    options = SSACOptions(r_during_c="train", grad_to_r=True)
    out = SSACStep(net, decoders, discriminators, MVKBCOptions(), options, None).train_step({"lb": lb, "ulb": ulb},
                                                                                          Record())
    assert grads(out["sup_loss"], [net.encoders[0].stages[0][0].weight])[0] > 0
    assert not any(grads(out["sup_loss"], decoders.parameters()))


@pytest.mark.parametrize("r_during_c", ["frozen", "train"])
def test_without_unlabelled_nodules_cs_step_is_mvkbcs_step(r_during_c):
    lb, _ = batches()
    net, decoders, discriminators = parts()
    torch.manual_seed(5)  # dropout draws alike in both
    want, ctx = Record(), Record()
    MVKBCStep(net.classifier, MVKBCOptions(), None).train_step(dict(lb), want)
    torch.manual_seed(5)
    step = SSACStep(net, decoders, discriminators, MVKBCOptions(), SSACOptions(r_during_c=r_during_c), None)
    got = step.train_step({"lb": lb, "ulb": None}, ctx)
    assert got["sup_loss"].item() == want.updates[0][1].item()
    params = list(net.classifier.parameters())
    assert grads(got["sup_loss"], params) == grads(want.updates[0][1], params)
    if r_during_c == "frozen":  # R takes no part: one update, C's, and R's encoders take no gradient
        assert [n for n, _ in ctx.updates] == [("classifier",)]
        assert not any(p.requires_grad for p in net.encoders.parameters())
    else:  # R's losses are those of the labelled nodules alone
        encoded = net.encode(lb["x"])
        rec = reconstruction_loss(decoders, encoded, net.stream_inputs(lb["x"]))
        assert got["rec_loss"].item() == pytest.approx(rec.item(), rel=1e-6)
        gen = generator_loss(discriminators, [code for _, code in encoded])
        assert got["gen_loss"].item() == pytest.approx(gen.item(), rel=1e-6)


def test_a_frozen_r_keeps_its_batchnorm_statistics():
    net, decoders, discriminators = parts()
    SSACStep(net, decoders, discriminators, MVKBCOptions(), SSACOptions(), None)
    before = net.encoders[0].stages[0][1].running_mean.clone()
    net.train()
    net(torch.randn(2, 27, 24, 24))
    assert not net.encoders.training and torch.equal(net.encoders[0].stages[0][1].running_mean, before)
    assert net.classifier.training


def test_the_config_states_its_defaults_and_refuses_what_cannot_train():
    cfg = load_config(CONFIGS / "lidc_voi_semi_ssac.yaml")
    assert cfg.semi.algorithm == "ssac" and cfg.ssac == SSACOptions()  # the file states the defaults
    assert cfg.ssac.pretrain_epochs(cfg.train.epochs) == 15 and SSACOptions().pretrain_epochs(2) == 1
    for bad, match in (("ssac.pretrain=0", "never learn"), ("ssac.grad_to_r=true", "grad_to_r"),
                       ("semi.unsup_weight=2", "unsup_weight"), ("ssac.channels=[4,8]", "four")):
        with pytest.raises(ConfigError, match=match):
            load_config(CONFIGS / "lidc_voi_semi_ssac.yaml", [bad])
    assert load_config(CONFIGS / "lidc_voi_semi_ssac.yaml", ["ssac.pretrain=0", "ssac.r_during_c=train"])


OVERRIDES = ["data.folds=3", "data.fold=0", "data.val_fraction=0.3", "data.image_size=[24,24]",
             "model.options.width=4", "model.options.hidden=[8,4]", "ssac.channels=[4,4,8,8]", "ssac.latent=6",
             "ssac.discriminator_hidden=8"]


class Stop(Exception):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["autoencoder", "network"])
def test_ssac_resumes_within_either_stage_to_the_same_weights(tmp_path, monkeypatch, stage):
    data = write_vois(tmp_path / "vois", n_patients=9)
    overrides = OVERRIDES + ["train.batch_size=2", "data.labelled_fraction=0.5", "train.checkpoint_every=1",
                             "ssac.pretrain=1", "ssac.r_during_c=train"]  # 2 steps an epoch, R in both stages
    cfg = load_config(CONFIGS / "lidc_voi_semi_ssac.yaml", overrides, epochs=2, data=str(data))
    recipe_for(cfg).train(RunDir(tmp_path / "full"), "cpu")
    cls = AutoencoderStep if stage == "autoencoder" else SSACStep
    original = cls.train_step

    def interrupted(self, batch, ctx):
        if ctx.step == 3:  # the stage's second step of epoch 2, after a checkpoint after its first
            raise Stop
        return original(self, batch, ctx)

    monkeypatch.setattr(cls, "train_step", interrupted)
    with pytest.raises(Stop):
        recipe_for(cfg).train(RunDir(tmp_path / "cut"), "cpu")
    folder = tmp_path / "cut" / ("autoencoder" if stage == "autoencoder" else "")
    assert load_state(folder / "checkpoint.pt")["loop"]["in_epoch"]["done"] == 1
    monkeypatch.setattr(cls, "train_step", original)
    recipe_for(cfg).train(RunDir(tmp_path / "cut"), "cpu")
    for sub in ("autoencoder", ""):
        for name in ("model", "decoder", "discriminator"):
            a = load_file(tmp_path / "full" / sub / f"{name}.safetensors")
            b = load_file(tmp_path / "cut" / sub / f"{name}.safetensors")
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (sub, name)


@pytest.mark.slow
def test_ssac_trains_predicts_and_evaluates_through_the_cli(tmp_path):
    data = write_vois(tmp_path / "vois", n_patients=9)
    run = tmp_path / "run"
    args = ["--data", str(data), "--out", str(run), "--epochs", "4", "--device", "cpu", "--set", "train.batch_size=4",
            "--set", "data.labelled_fraction=0.5", *[a for s in OVERRIDES for a in ("--set", s)]]
    assert main(["train", str(CONFIGS / "lidc_voi_semi_ssac.yaml"), *args]) == 0
    split = json.loads((run / "split.json").read_text())
    assert split["unlabelled"] and not set(split["unlabelled"]) & set(split["train"] + split["val"] + split["heldout"])
    history = (run / "autoencoder" / "history.csv").read_text().splitlines()
    assert len(history) == 2 and {"rec_loss", "gen_loss", "disc_loss"} <= set(history[0].split(","))  # 0.25 x 4
    assert (run / "history.csv").exists() and not (run / "decoder.safetensors").exists()  # R frozen: C alone
    r_before = load_file(run / "autoencoder" / "model.safetensors")
    r_after = load_file(run / "model.safetensors")
    assert all(torch.equal(r_before[k], r_after[k]) for k in r_before if k.startswith("encoders."))
    assert main(["predict", str(run), str(data), "--out", str(tmp_path / "pred"), "--device", "cpu",
                 "--maps", "gradcam"]) == 0
    assert len((tmp_path / "pred" / "predictions.csv").read_text().splitlines()) == 19
    assert main(["evaluate", str(run), str(data), "--split", "heldout", "--out", str(tmp_path / "m.json")]) == 0
    restored = load_recipe(run, "cpu")
    assert isinstance(restored.model_, SSACNet)
    assert restored.predict(open_dataset(data)).outputs.shape == (18, 2)

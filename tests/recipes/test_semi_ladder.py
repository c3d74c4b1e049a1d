"""MK-Ladder (semi.algorithm: ladder): the combinator starts as the identity of its noisy input and
the decoder's estimates have every level's shape, the denoising cost by hand, it trains the
streams and the decoders (from the unlabelled nodules too) but not the KBC layers or the view
weighting, the noisy pass leaves BatchNorm's running statistics to the clean one, with noise 0 and
weights 0 a step is MV-KBC's step, resume within an epoch is exact, and the CLI."""

import pytest
import torch
from safetensors.torch import load_file

from medsight.cli import main
from medsight.engine.checkpoint import load_state
from medsight.errors import ConfigError
from medsight.models import create_model
from medsight.models.ladder import Combinator, denoising_cost
from medsight.recipes import load_config, recipe_for
from medsight.recipes.mvkbc import MVKBCOptions, MVKBCStep
from medsight.recipes.semi_ladder import LadderOptions, LadderStep, ladder_decoders, stream_pass
from medsight.rundir import RunDir

from builders import CONFIGS, write_vois
from test_semi_ssac import Record, batches, grads


def parts(share_views=True):
    torch.manual_seed(0)
    model = create_model("mvkbc", in_channels=27, backbone="resnet14", hidden=(8, 4), width=4,
                         share_views=share_views)
    return model, ladder_decoders(model, (24, 24))


def test_the_combinator_starts_as_the_noisy_value():
    z, u = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    assert torch.equal(Combinator(3)(z, u), z)


@pytest.mark.parametrize("share_views", [True, False])
def test_the_decoder_estimates_every_level_of_every_stream(share_views):
    model, decoders = parts(share_views)
    levels, probs = stream_pass(model, torch.randn(2, 27, 24, 24), 0.3)
    assert len(levels) == len(model.streams) == len(decoders) and len(probs) == 9
    for decoder, lv in zip(decoders, levels):
        estimates = decoder(lv)
        assert [e.shape for e in estimates] == [v.shape for v in lv]
    assert levels[0][0].shape[1:] == (1, 24, 24) and levels[0][-1].shape[1:] == (2,)


def test_the_denoising_cost_by_hand():
    clean = torch.tensor([[1.0], [3.0]])  # one channel, std (unbiased) sqrt(2)
    estimate = torch.tensor([[2.0], [3.0]])
    assert denoising_cost(estimate, clean).item() == pytest.approx((1 / 2) / 2)  # ((1 / sqrt 2)^2 + 0) / 2


def test_the_costs_train_the_streams_and_decoders_and_learn_from_the_unlabelled_nodules():
    model, decoders = parts()
    with torch.no_grad():  # combinators past their identity start (there u has no gradient yet), as after a step
        for m in decoders.modules():
            if isinstance(m, Combinator):
                m.a.add_(0.1 * torch.randn_like(m.a))
    lb, ulb = batches()
    ctx = Record()
    out = LadderStep(model, decoders, MVKBCOptions(), LadderOptions(), None).train_step({"lb": lb, "ulb": ulb}, ctx)
    assert [names for names, _ in ctx.updates] == [()]  # one optimiser, the whole network and the decoders
    assert all(out[f"cost_{level}"].item() > 0 for level in range(6))
    denoise, sup = out["denoising_loss"], out["sup_loss"]
    streams = [model.streams[0].backbone.conv1.weight, model.streams[1].head[0].weight]
    fused = [*model.kbc.parameters(), *model.fusion.parameters()]
    dec = [decoders[0].combinators[0].a, decoders[0].down[0].weight, decoders[2].from_top.weight]
    assert all(g > 0 for g in grads(denoise, streams + dec)) and not any(grads(denoise, fused))
    assert all(g > 0 for g in grads(sup, streams + fused[-2:])) and not any(grads(sup, dec))
    assert torch.autograd.grad(denoise, ulb["weak"], retain_graph=True)[0].abs().sum() > 0


def test_prediction_statistics_come_from_the_clean_pass():
    model, decoders = parts()
    lb, ulb = batches()
    twin = parts()[0]
    twin.train()(torch.cat([lb["x"], ulb["weak"].detach()]))  # one clean pass
    LadderStep(model, decoders, MVKBCOptions(), LadderOptions(), None).train_step({"lb": lb, "ulb": ulb}, Record())
    for (name, a), b in zip(model.named_buffers(), twin.buffers()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_with_no_noise_and_no_weights_a_step_is_mvkbcs():
    lb, _ = batches()
    model, decoders = parts()
    want, got = Record(), Record()
    torch.manual_seed(5)
    MVKBCStep(model, MVKBCOptions(), None).train_step(dict(lb), want)
    torch.manual_seed(5)
    off = LadderOptions(noise=0, weights=[0] * 6)
    LadderStep(model, decoders, MVKBCOptions(), off, None).train_step({"lb": lb, "ulb": None}, got)
    a, b = want.updates[0][1], got.updates[0][1]
    assert a.item() == b.item() and grads(a, model.parameters()) == grads(b, model.parameters())


def test_the_config_states_its_defaults_and_refuses_bad_weights():
    cfg = load_config(CONFIGS / "lidc_voi_semi_ladder.yaml")
    assert cfg.semi.algorithm == "ladder" and cfg.ladder == LadderOptions()
    with pytest.raises(ConfigError, match="6 non-negative"):
        load_config(CONFIGS / "lidc_voi_semi_ladder.yaml", ["ladder.weights=[1,1]"])


OVERRIDES = ["data.folds=3", "data.fold=0", "data.val_fraction=0.3", "data.image_size=[24,24]",
             "model.options.width=4", "model.options.hidden=[8,4]", "data.labelled_fraction=0.5"]


class Stop(Exception):
    pass


@pytest.mark.slow
def test_ladder_resumes_within_an_epoch_and_runs_through_the_cli(tmp_path, monkeypatch):
    data = write_vois(tmp_path / "vois", n_patients=9)
    overrides = OVERRIDES + ["train.batch_size=2", "train.checkpoint_every=1"]
    cfg = load_config(CONFIGS / "lidc_voi_semi_ladder.yaml", overrides, epochs=2, data=str(data))
    recipe_for(cfg).train(RunDir(tmp_path / "full"), "cpu")
    original = LadderStep.train_step

    def interrupted(self, batch, ctx):
        if ctx.step == 3:  # the second step of epoch 2, after a checkpoint after its first
            raise Stop
        return original(self, batch, ctx)

    monkeypatch.setattr(LadderStep, "train_step", interrupted)
    with pytest.raises(Stop):
        recipe_for(cfg).train(RunDir(tmp_path / "cut"), "cpu")
    assert load_state(tmp_path / "cut" / "checkpoint.pt")["loop"]["in_epoch"]["done"] == 1
    monkeypatch.setattr(LadderStep, "train_step", original)
    recipe_for(cfg).train(RunDir(tmp_path / "cut"), "cpu")
    for name in ("model", "decoder"):
        a, b = load_file(tmp_path / "full" / f"{name}.safetensors"), load_file(tmp_path / "cut" / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    run = tmp_path / "cli"
    assert main(["train", str(CONFIGS / "lidc_voi_semi_ladder.yaml"), "--data", str(data), "--out", str(run),
                 "--epochs", "2", "--device", "cpu", "--set", "train.batch_size=4",
                 *[a for s in OVERRIDES for a in ("--set", s)]]) == 0
    assert {"denoising_loss", "cost_0", "cost_5"} <= set((run / "history.csv").read_text().splitlines()[0].split(","))
    assert main(["predict", str(run), str(data), "--out", str(tmp_path / "pred"), "--device", "cpu"]) == 0
    assert main(["evaluate", str(run), str(data), "--split", "heldout", "--out", str(tmp_path / "m.json")]) == 0

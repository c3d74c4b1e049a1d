"""Weight averaging in the loop (train.weight_average): EMA against its closed form, SWA against
the plain mean of the weights of the last epochs, BatchNorm's statistics against a pass by hand,
and resumption of an averaged run to identical weights."""

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from medsight.engine import Trainer, epoch_seed
from medsight.engine.averaging import EMAWeights, SWAWeights, weight_average
from medsight.errors import MedsightError

X = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
Y = X @ torch.tensor([[1.0], [-2.0], [0.5]]) + 1.0


class Probe:
    """Regression on (X, Y) through Linear -> BatchNorm -> Linear. Validation reports the first
    weight the model holds while it is validated and an ever-rising ``score`` (so the last epoch
    is always the best); every step's trained weights are kept in ``steps``."""

    monitor, monitor_mode = "score", "max"

    def __init__(self, model, validated=0):
        self.models = {"model": model}
        self.steps, self.epochs_validated = [], validated

    def optimizers(self):
        return {"model": torch.optim.SGD(self.models["model"].parameters(), lr=0.05, momentum=0.9)}

    def train_step(self, batch, ctx):
        x, y = batch
        loss = ((self.models["model"](x) - y) ** 2).mean()
        ctx.update(loss)
        self.steps.append({k: v.detach().clone() for k, v in self.models["model"].state_dict().items()})
        return {"loss": loss}

    def validation_step(self, batch, device):
        return self.models["model"][0].weight[0, 0].item()

    def validation_metrics(self, outputs):
        self.epochs_validated += 1
        return {"weight": outputs[0], "score": float(self.epochs_validated)}


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 1))


def batches(epoch):
    order = torch.randperm(64, generator=torch.Generator().manual_seed(epoch_seed(0, epoch)))
    for idx in order.split(16):
        yield X[idx], Y[idx]


def bn_inputs():
    return iter(X.split(16))  # the training inputs, in order, unaugmented


def train(folder, average, epochs=5, callbacks=(), per_epoch=None, validated=0):
    """``per_epoch``: a list that receives the model's trained weights after every epoch;
    ``validated``: the epochs an interrupted attempt validated (the probe's score goes on from there)."""
    model = net()
    step = Probe(model, validated)
    keep = [lambda e, r: per_epoch.append({k: v.clone() for k, v in model.state_dict().items()})] \
        if per_epoch is not None else []
    result = Trainer(folder, epochs, "cpu", scheduler="none", average=average, callbacks=[*callbacks, *keep]).fit(
        step, batches, lambda: [(X[:8], Y[:8])])
    return model, step, result


def test_ema_of_a_known_sequence_is_the_closed_form():
    """Weights 1, 2, ..., 8 with decay 0.75: the warm-up decays min(0.75, t / (t + 1)) make the
    first three updates a running mean (2.0), then e <- 0.75 e + 0.25 w."""
    model = nn.Linear(1, 1, bias=False)
    ema = EMAWeights(0.75)
    ema.start({"m": model})
    for w in range(1, 9):
        model.weight.data.fill_(float(w))
        ema.after_step({"m": model})
    closed_form = 0.75 ** 5 * 2.0 + 0.25 * sum(0.75 ** (8 - t) * t for t in range(4, 9))
    assert ema.weights()["m"]["weight"].item() == pytest.approx(closed_form, rel=1e-6)


def test_the_loop_validates_and_saves_the_ema_of_every_step(tmp_path):
    model, step, result = train(tmp_path, EMAWeights(0.9))
    expected = {k: v.clone() for k, v in step.steps[0].items()}
    for t, weights in enumerate(step.steps[1:], start=1):
        d = min(0.9, 1 - 1 / (t + 1))
        for key, value in weights.items():
            expected[key] = d * expected[key] + (1 - d) * value if value.is_floating_point() else value
    saved = load_file(tmp_path / "model.safetensors")
    assert result.best_epoch == 5
    for key, value in expected.items():  # the average, not the last step's weights, is what is kept
        assert torch.allclose(saved[key].to(value.dtype), value, atol=1e-6), key
        assert torch.allclose(model.state_dict()[key].to(value.dtype), value, atol=1e-6), key
    assert not torch.allclose(saved["0.weight"], step.steps[-1]["0.weight"], atol=1e-4)
    # validation ran on the average: the last epoch's recorded weight is the EMA's, not the trained one
    assert result.history[-1]["weight"] == pytest.approx(expected["0.weight"][0, 0].item(), abs=1e-6)
    assert result.validation == result.history[-1]


def test_swa_is_the_mean_of_the_last_epochs_with_batchnorm_recomputed(tmp_path):
    per_epoch = []
    model, _, result = train(tmp_path, SWAWeights(3, bn_inputs), epochs=5, per_epoch=per_epoch)
    saved = load_file(tmp_path / "model.safetensors")
    for key in ("0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"):  # the parameters
        mean = torch.stack([w[key] for w in per_epoch[2:]]).mean(0)  # epochs 3, 4, 5
        assert torch.allclose(saved[key], mean, atol=1e-6), key
    for key in ("0.weight", "3.weight"):  # (0.bias gets no gradient: BatchNorm takes out its mean)
        assert not torch.allclose(saved[key], per_epoch[-1][key], atol=1e-4), key
    # BatchNorm by hand: with momentum None torch keeps the mean over batches of each batch's mean
    # and unbiased variance of the BatchNorm input (the first layer with the mean weights)
    features = [x @ saved["0.weight"].T + saved["0.bias"] for x in X.split(16)]
    assert torch.allclose(saved["1.running_mean"], torch.stack([f.mean(0) for f in features]).mean(0), atol=1e-5)
    assert torch.allclose(saved["1.running_var"], torch.stack([f.var(0) for f in features]).mean(0), atol=1e-5)
    assert not torch.allclose(saved["1.running_var"], per_epoch[-1]["1.running_var"], atol=1e-3)
    assert int(saved["1.num_batches_tracked"]) == 4
    # the loop holds the average and validated it once, after the last epoch
    assert all(torch.equal(model.state_dict()[k], saved[k]) for k in saved)
    assert result.best_epoch == 5 and result.validation["averaged_epochs"] == 3
    assert result.validation["weight"] == pytest.approx(saved["0.weight"][0, 0].item(), abs=1e-6)
    assert [r["weight"] for r in result.history] == pytest.approx([w["0.weight"][0, 0].item() for w in per_epoch])


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("kind", ["ema", "swa"])
def test_an_averaged_run_resumes_to_the_same_weights(tmp_path, kind):
    def averager():
        return weight_average(kind, epochs=5, ema_decay=0.9, swa_epochs=3, bn_inputs=bn_inputs)

    train(tmp_path / "full", averager())

    def cut(epoch, record):
        if epoch == 4:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(tmp_path / "cut", averager(), callbacks=[cut])
    train(tmp_path / "cut", averager(), validated=4)
    full, resumed = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_swa_takes_no_early_stopping_and_averages_at_most_the_epochs_run(tmp_path):
    with pytest.raises(MedsightError, match="no early stopping"):
        Trainer(tmp_path, 5, "cpu", patience=2, average=SWAWeights(3, bn_inputs))
    assert weight_average("swa", epochs=2, swa_epochs=5, bn_inputs=bn_inputs).first_epoch == 1
    assert weight_average("swa", epochs=30, swa_epochs=5, bn_inputs=bn_inputs).first_epoch == 26
    assert weight_average("none", epochs=30) is None


def test_a_stage_averages_one_network_fed_its_images():
    from medsight.config import TrainConfig
    from medsight.errors import ConfigError
    from medsight.recipes.network import stage_average

    class Two:
        models = {"student": net(), "teacher": net()}

    with pytest.raises(ConfigError, match="network stage trains 2 networks together"):
        stage_average(TrainConfig(weight_average="ema"), "network", Two(), None, None, own_inputs=False)
    one = Probe(net())
    with pytest.raises(ConfigError, match="swa recomputes BatchNorm"):
        stage_average(TrainConfig(weight_average="swa"), "kbc", one, None, None, own_inputs=True)
    assert isinstance(stage_average(TrainConfig(weight_average="ema"), "kbc", one, None, None, True), EMAWeights)
    assert stage_average(TrainConfig(), "network", Two(), None, None, False) is None

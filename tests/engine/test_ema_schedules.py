"""EMA copies of a model and the schedules of learning rates and loss weights."""

import math

import pytest
import torch

from medsight.engine import EMA, LossWeight, lr_scheduler


def test_ema_averages_parameters_and_copies_integer_buffers():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = EMA(model, decay=0.9)
    start = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()(torch.randn(4, 3))  # moves the BatchNorm statistics and its batch counter
    ema.update(model)
    now, theirs = ema.module.state_dict(), model.state_dict()
    for key, value in now.items():
        if value.is_floating_point():
            assert torch.allclose(value, 0.9 * start[key] + 0.1 * theirs[key]), key
        else:
            assert torch.equal(value, theirs[key]), key  # num_batches_tracked follows the model
    assert int(ema.updates) == 1
    assert not any(p.requires_grad for p in ema.parameters())


def test_ema_warmup_starts_from_the_model_itself():
    model = torch.nn.Linear(2, 1)
    ema = EMA(model, decay=0.99, warmup=True)
    with torch.no_grad():
        model.weight.fill_(3.0)
    assert ema.current_decay() == 0.0  # the first update copies the model ...
    ema.update(model)
    assert torch.equal(ema.module.weight, model.weight)
    assert ema.current_decay() == pytest.approx(0.5)  # ... then 1 - 1/(t+1) until it reaches the decay
    for _ in range(200):
        ema.update(model)
    assert ema.current_decay() == 0.99
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.5)


def test_loss_weights_warm_up_then_ramp_up():
    sigmoid = LossWeight(weight=2.0, warmup=10, rampup=100)
    assert sigmoid(0) == sigmoid(9) == 0.0
    assert sigmoid(10) == pytest.approx(2.0 * math.exp(-5.0))
    assert sigmoid(60) == pytest.approx(2.0 * math.exp(-5.0 * 0.25))  # halfway: exp(-5 (1 - 0.5)^2)
    assert sigmoid(110) == sigmoid(10_000) == 2.0
    linear = LossWeight(weight=1.0, rampup=4, shape="linear")
    assert [linear(s) for s in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert LossWeight(0.5)(0) == 0.5


@pytest.mark.parametrize("kind,expected", [("none", [1, 1, 1, 1]), ("step", [1, 1, 0.5, 0.5]),
                                           ("poly", [1, 0.75 ** 0.9, 0.5 ** 0.9, 0.25 ** 0.9]),
                                           ("cosine", [1, (1 + math.cos(math.pi / 4)) / 2, 0.5,
                                                       (1 + math.cos(3 * math.pi / 4)) / 2])])
def test_learning_rate_schedules(kind, expected):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = lr_scheduler(opt, kind, epochs=4, every=2, gamma=0.5)
    rates = []
    for _ in range(4):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates == pytest.approx(expected)
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        lr_scheduler(opt, "linear", epochs=4)

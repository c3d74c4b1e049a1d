"""MK-Ladder, the talk's Ladder-network comparison (Rasmus et al., NeurIPS 2015) in MV-KBC's frame
(``semi.algorithm: ladder``). The authors' configuration is not public; this one is medsight's.

Every stream of the MV-KBC network is a Ladder encoder with 6 levels: its input patch, the maps
after its ResNet's 4 stages, its 2-class softmax. Each step runs the batch (the labelled nodules
and the unlabelled ones' weak view) twice through the streams:

- the **noisy pass**: Gaussian noise of ``ladder.noise`` x the level's batch std per channel (the
  paper's N(0, 0.3^2) on normalised values) added to the input and to each stage's map before the
  next stage reads it (the heads' dropout is their own noise); the MV-KBC loss (``mvkbc.penalty``)
  of the labelled nodules is taken on this pass's fused output, as the paper's supervised cost;
  it holds BatchNorm's running statistics (prediction uses the clean pass's);
- the **clean pass**: the same streams without noise; its levels are the targets, constants
  with ``ladder.detach_targets`` (default; false is the paper's, where the cost trains the clean
  pass too: in the smoke run of benchmarks/RESULTS.md it collapsed the streams' outputs to one
  value, which this encoder, not batch-normalised at its levels as the paper's, allows).

A :class:`medsight.models.ladder.LadderDecoder` per stream rebuilds every level of the clean pass
top-down from the noisy pass, and the denoising cost sum_l ``ladder.weights[l]`` x (mean over
streams of the level's normalised squared error, :func:`denoising_cost`) is added on every nodule.
The weights' default, 1, 1, 0.1, 0.1, 0.1, 0 (input, stages 1-4, softmax), is medsight's: the
paper's MNIST values (1000, 10, 0.1 ...) swamp the penalty loss here, and the softmax level,
normalised by its small batch std, held the penalty loss at the class prior in the smoke run
(with weight 0.1); its decoder level is still computed and logged (``cost_5``). One optimiser
(``train.*``) trains the network and the decoders, as one cost. Prediction is the MV-KBC
network's (the clean pass). With noise 0 and every weight 0, a step is MV-KBC's step
(tests/recipes/test_semi_ladder.py).
"""

from __future__ import annotations

import torch
from pydantic import Field, field_validator
from torch import nn

from medsight.config import Section
from medsight.models.ladder import LadderDecoder, denoising_cost
from medsight.models.mvkbc import MVKBC
from medsight.models.ssac import backbone_layout, per_stream, per_view, resnet_stages, stream_inputs
from medsight.recipes.mvkbc import MVKBCOptions, MVKBCStep, nodule_size
from medsight.recipes.semi_catgan import held_batchnorm
from medsight.recipes.semi_ssac import all_nodules, split_batch

LEVELS = 6  # input, 4 ResNet stages, softmax


class LadderOptions(Section):
    noise: float = Field(0.3, ge=0)  # std of the noise, in units of each level's batch std per channel
    weights: list[float] = Field(default_factory=lambda: [1.0, 1.0, 0.1, 0.1, 0.1, 0.0])  # input .. softmax
    detach_targets: bool = True  # false (the paper's): the denoising cost also trains the clean pass

    @field_validator("weights")
    @classmethod
    def _six(cls, weights: list[float]) -> list[float]:
        if len(weights) != LEVELS or min(weights) < 0:
            raise ValueError(f"{LEVELS} non-negative weights: input, the 4 ResNet stages, the softmax")
        return weights


def ladder_decoders(model: MVKBC, image_size: tuple[int, int]) -> nn.ModuleList:
    """One decoder per stream of ``model``."""
    stages = backbone_layout(model.streams[0].backbone, tuple(image_size))
    channels = [1] + [c for c, _, _ in stages]
    sizes = [tuple(image_size)] + [(h, w) for _, h, w in stages]
    return nn.ModuleList(LadderDecoder(channels, sizes) for _ in model.streams)


def scaled_noise(sigma: float):
    """``noise(map)``: N(0, sigma^2) times the map's batch std per channel (a constant)."""
    def noise(m: torch.Tensor) -> torch.Tensor:
        dims = [0] + list(range(2, m.ndim))
        return sigma * m.detach().std(dims, keepdim=True) * torch.randn_like(m)
    return noise


def stream_pass(model: MVKBC, x: torch.Tensor, sigma: float) -> tuple[list[list[torch.Tensor]], list]:
    """Per stream its 6 levels, and the patch softmaxes ``probs[v][p]`` (for the KBC layers)."""
    noise = scaled_noise(sigma) if sigma > 0 else None
    levels = []
    for i, u in enumerate(stream_inputs(model, x)):
        u = u + noise(u) if noise else u
        levels.append([u, *resnet_stages(model.streams[i].backbone, u, [noise] * 4 if noise else None)])
    last = per_view(model, [lv[-1] for lv in levels], len(x))
    probs = [[model._stream(v, p).forward_head(m) for p, m in enumerate(view)] for v, view in enumerate(last)]
    for lv, top in zip(levels, per_stream(model, probs)):
        lv.append(top)
    return levels, probs


class LadderStep(MVKBCStep):
    """``models``: ``model`` (MV-KBC, the encoder) and ``decoder`` (one Ladder decoder per stream)."""

    def __init__(self, model: MVKBC, decoders: nn.ModuleList, options: MVKBCOptions, ladder: LadderOptions,
                 optimizer, mm_per_pixel: float = 0.0):
        super().__init__(model, options, optimizer, mm_per_pixel=mm_per_pixel)
        self.models["decoder"] = decoders
        self.ladder = ladder

    def optimizers(self):
        return {"model": self.make_optimizer([*self.models["model"].parameters(),
                                              *self.models["decoder"].parameters()])}

    def train_step(self, batch, ctx):
        lb, ulb = split_batch(batch)
        model, device = self.models["model"], ctx.device
        y, x = lb["y"].to(device), all_nodules(lb, ulb, device)
        with held_batchnorm(model):
            noisy, probs = stream_pass(model, x, self.ladder.noise)
        size = nodule_size(lb["mask"], self.mm_per_pixel).to(device) if self.options.size_input else None
        labelled = [[p[:len(y)] for p in view] for view in probs]
        sup = self.loss(model.logit_from_views(model.view_probs_from_patch_probs(labelled), size).float(), y)
        clean, _ = stream_pass(model, x, 0.0)
        per_level = [[] for _ in range(LEVELS)]  # each stream's cost at each level
        for decoder, noisy_levels, clean_levels in zip(self.models["decoder"], noisy, clean):
            for level, (estimate, target) in enumerate(zip(decoder(noisy_levels), clean_levels)):
                target = target.detach() if self.ladder.detach_targets else target
                per_level[level].append(denoising_cost(estimate, target))
        costs = torch.stack([torch.stack(c).mean() for c in per_level])
        denoise = (torch.tensor(self.ladder.weights, device=device) * costs).sum()
        loss = sup + denoise
        ctx.update(loss)
        return {"loss": loss, "sup_loss": sup, "denoising_loss": denoise,
                **{f"cost_{level}": costs[level].detach() for level in range(LEVELS)}}


def fit_ladder(run, record, model: MVKBC, data, stream, unlabelled, cfg, device, console, callbacks=()):
    """The one stage ``network``; returns the record."""
    from medsight.recipes.network import fit_network, make_optimizer

    decoders = ladder_decoders(model, tuple(record.input.image_size))
    optimizer = lambda params: make_optimizer(cfg.train, params)  # noqa: E731
    step = LadderStep(model, decoders, cfg.mvkbc, cfg.ladder, optimizer, mm_per_pixel=cfg.mm_per_pixel)
    return fit_network(run, record, "network", step, data.train, data.val, cfg, device, console, callbacks,
                       stream=stream, unlabelled=unlabelled, epoch_length=cfg.semi.epoch_length)

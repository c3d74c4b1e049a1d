"""MK-CatGAN, the talk's categorical GAN comparison (Springenberg 2016, "Unsupervised and
semi-supervised learning with categorical generative adversarial networks") in MV-KBC's frame
(``semi.algorithm: catgan``). The authors' configuration is not public; this one is medsight's.

The MV-KBC network is CatGAN's discriminator: its fused probability p(y | x) over (benign,
malignant). A generator G (:class:`medsight.models.ssac.Decoder` with a nodule's views x patch
types as output channels, ``catgan.channels``) maps N(0, I) noise (``catgan.latent``-d) to whole
multi-view nodules, as many per step as the unlabelled batch. With H the binary entropy, every step:

1. the classifier (``train.*``'s optimiser) minimises MV-KBC's loss on the labelled nodules
   + ``catgan.unsup_weight`` x ( - H[mean p(y | x) over the real nodules] (classes used alike)
   + mean H[p(y | x)] over the real nodules (confident on data) - mean H[p(y | G(z))] (unsure on
   generated ones) ); the real nodules are the batch's labelled and unlabelled ones (one weak view);
2. the generator (Adam ``catgan.g_lr``, betas (``catgan.beta1``, 0.999)) minimises
   mean H[p(y | G(z))] - H[mean p(y | G(z))] (generated nodules classified confidently, both classes).

``catgan.marginal: prior`` (not the paper's default) replaces the real nodules' marginal entropy
by the cross-entropy of the batch's mean p to the labelled share of malignant nodules (CatGAN's
remark for classes known not to be balanced; LIDC's are about 1 : 2); ``entropy`` (default) is the
paper's. Generated nodules pass the classifier with its BatchNorm statistics held (they normalise
by their own batch but do not move the running statistics that validation and prediction use).
Prediction is the MV-KBC network's. With ``unsup_weight`` 0 and no unlabelled nodules the
classifier's step is MV-KBC's step (tests/recipes/test_semi_catgan.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from medsight.config import Section
from medsight.models.mvkbc import MVKBC
from medsight.models.ssac import Decoder
from medsight.recipes.mvkbc import MVKBCOptions, MVKBCStep
from medsight.recipes.semi_ssac import StageWidths, all_nodules, split_batch


class CatGANOptions(Section):
    latent: int = Field(32, ge=1)  # the generator's noise
    channels: StageWidths = Field(default_factory=lambda: [8, 16, 32, 64])  # the generator's stages (SSAC's decoder)
    unsup_weight: float = Field(1.0, ge=0)  # the entropy terms against the labelled loss
    marginal: Literal["entropy", "prior"] = "entropy"  # the real nodules' marginal term
    g_lr: float = Field(1e-3, gt=0)  # Adam, the generator
    beta1: float = Field(0.5, ge=0, lt=1)


# -- the entropies of a binary prediction, from its logits ----------------------------------------------------
def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """H of Bernoulli(p), elementwise, in nats (0 at p = 0 or 1)."""
    p = p.clamp(1e-7, 1 - 1e-7)
    return -(p * p.log() + (1 - p) * (1 - p).log())


def conditional_entropy(z: torch.Tensor) -> torch.Tensor:
    """Mean over nodules of H[p(y | x)], p = sigmoid(z): p softplus(-z) + (1 - p) softplus(z)."""
    p = torch.sigmoid(z)
    return (p * F.softplus(-z) + (1 - p) * F.softplus(z)).mean()


def marginal_entropy(z: torch.Tensor) -> torch.Tensor:
    """H[mean over nodules of p(y | x)]."""
    return binary_entropy(torch.sigmoid(z).mean())


def prior_cross_entropy(z: torch.Tensor, prior: float) -> torch.Tensor:
    """Cross-entropy of the batch's mean p(malignant) to ``prior``: its minimum is at mean p = prior."""
    q = torch.sigmoid(z).mean().clamp(1e-7, 1 - 1e-7)
    return -(prior * q.log() + (1 - prior) * (1 - q).log())


def classifier_unsup_loss(real_z: torch.Tensor, fake_z: torch.Tensor, marginal: str = "entropy",
                          prior: float = 0.5) -> torch.Tensor:
    """The classifier's CatGAN terms (to minimise), from the logits of real and generated nodules."""
    spread = -marginal_entropy(real_z) if marginal == "entropy" else prior_cross_entropy(real_z, prior)
    return spread + conditional_entropy(real_z) - conditional_entropy(fake_z)


def generator_loss(fake_z: torch.Tensor) -> torch.Tensor:
    return conditional_entropy(fake_z) - marginal_entropy(fake_z)


@contextmanager
def held_batchnorm(model: nn.Module):
    """BatchNorm layers still normalise by the batch (train mode) but keep their running statistics."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) running + 0 batch
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


# -- the step ---------------------------------------------------------------------------------------
def generator_for(model: MVKBC, image_size: tuple[int, int], options: CatGANOptions) -> Decoder:
    return Decoder(tuple(options.channels), options.latent, tuple(image_size), model.views * model.patches)


class CatGANStep(MVKBCStep):
    """``models``: ``model`` (MV-KBC, the discriminator) and ``generator``."""

    def __init__(self, model: MVKBC, generator: Decoder, options: MVKBCOptions, catgan: CatGANOptions, optimizer,
                 class_prior: float = 0.5, mm_per_pixel: float = 0.0):
        super().__init__(model, options, optimizer, mm_per_pixel=mm_per_pixel)
        self.models["generator"] = generator
        self.catgan, self.class_prior = catgan, class_prior

    def optimizers(self):
        return {"model": self.make_optimizer(self.models["model"].parameters()),
                "generator": torch.optim.Adam(self.models["generator"].parameters(), lr=self.catgan.g_lr,
                                              betas=(self.catgan.beta1, 0.999))}

    def fused_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.models["model"](x)[:, 1].float()

    def train_step(self, batch, ctx):
        lb, ulb = split_batch(batch)
        model, generator, device = self.models["model"], self.models["generator"], ctx.device
        y, n = lb["y"].to(device), len(lb["y"])
        x = all_nodules(lb, ulb, device)
        real_z = self.fused_logits(x)  # no size input: a generated nodule has no mask (the config refuses it)
        sup = self.loss(real_z[:n], y)
        noise = torch.randn(len(x) - n if ulb is not None else n, self.catgan.latent, device=device)
        fake = generator(noise)
        with held_batchnorm(model):
            fake_z = self.fused_logits(fake.detach())
        unsup = classifier_unsup_loss(real_z, fake_z, self.catgan.marginal, self.class_prior)
        loss = sup + self.catgan.unsup_weight * unsup
        ctx.update(loss, "model")
        with held_batchnorm(model):
            g_loss = generator_loss(self.fused_logits(fake))
        ctx.update(g_loss, "generator")
        return {"loss": loss, "sup_loss": sup, "unsup_loss": unsup, "g_loss": g_loss,
                "p_fake": torch.sigmoid(fake_z.detach()).mean()}


def fit_catgan(run, record, model: MVKBC, data, stream, unlabelled, cfg, device, console, callbacks=()):
    """The one stage ``network``; returns the record."""
    from medsight.recipes.network import fit_network, make_optimizer

    generator = generator_for(model, tuple(record.input.image_size), cfg.catgan)
    prior = min(max(float((data.train.labels == 1).float().mean()), 0.01), 0.99)
    optimizer = lambda params: make_optimizer(cfg.train, params)  # noqa: E731
    step = CatGANStep(model, generator, cfg.mvkbc, cfg.catgan, optimizer, prior, mm_per_pixel=cfg.mm_per_pixel)
    return fit_network(run, record, "network", step, data.train, data.val, cfg, device, console, callbacks,
                       stream=stream, unlabelled=unlabelled, epoch_length=cfg.semi.epoch_length)

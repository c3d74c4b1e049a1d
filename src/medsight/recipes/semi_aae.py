"""MK-AAE, the talk's semi-supervised adversarial autoencoder comparison (Makhzani et al. 2016,
"Adversarial autoencoders", section 5) in MV-KBC's multi-view frame (``semi.algorithm: aae``).
The authors' configuration is not public; this one is medsight's.

Every stream of the MV-KBC network (one per patch type with ``share_views``) is the encoder
q(y, z | patch): its 2-class softmax (the stream's head, as MV-KBC computes it) is the categorical
latent y, and a linear layer on the backbone's pooled features gives a style code z
(``aae.latent``-d). Per stream a decoder (:class:`medsight.models.ssac.Decoder`, ``aae.channels``)
reconstructs the patch from (y, z); two discriminators (:class:`LatentDiscriminator`, MLPs) tell z
from N(0, I) and y from one-hot draws of a categorical prior with p(malignant) =
``aae.class_prior`` (None: the fraction among the labelled training nodules, since LIDC's classes are
not balanced as Makhzani's MNIST digits). One training stage, every step:

1. the discriminators (their optimiser): per stream and latent, (BCE(D(prior draw), 1) + BCE(D(code), 0)) / 2,
   codes detached; on every nodule of the batch, labelled and unlabelled (one weak view);
2. one update of the MV-KBC network (``train.*``'s optimiser) and of the style layers and decoders
   (Adam ``aae.r_lr``): MV-KBC's loss (``mvkbc.penalty``) on the labelled nodules' fused output
   + ``aae.rec_weight`` x MSE(reconstruction, patch) + ``aae.adv_weight`` x the encoder's BCE(D(code), 1)
   (z's and y's, their mean), on every nodule. Makhzani alternates the three phases as separate
   updates; one summed update is the same gradient at a third of the passes.

Prediction is the MV-KBC network's (the decoders and discriminators only train it), so a run's
``model.safetensors`` is an MV-KBC network. Without unlabelled nodules the AAE learns the labelled
ones alone; with both weights 0 a step is MV-KBC's step (tests/recipes/test_semi_aae.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from medsight.config import Section
from medsight.models.mvkbc import MVKBC
from medsight.models.ssac import Decoder, LatentDiscriminator
from medsight.recipes.mvkbc import MVKBCOptions, MVKBCStep, nodule_size
from medsight.recipes.semi_ssac import (
    StageWidths,
    all_nodules,
    discriminator_loss,
    split_batch,
)


class AAEOptions(Section):
    latent: int = Field(8, ge=1)  # the style code z of each stream (y is the stream's 2-class softmax)
    channels: StageWidths = Field(default_factory=lambda: [8, 16, 32, 64])  # the decoder's stages, as SSAC's
    discriminator_hidden: int = Field(64, ge=1)
    rec_weight: float = Field(1.0, ge=0)  # reconstruction MSE
    adv_weight: float = Field(1.0, ge=0)  # the encoder's adversarial BCE (mean of z's and y's)
    class_prior: float | None = Field(None, gt=0, lt=1)  # p(malignant) of y's prior (None: the labelled share)
    r_lr: float = Field(1e-3, gt=0)  # Adam, the style layers and decoders
    d_lr: float = Field(1e-3, gt=0)  # Adam, the discriminators
    beta1: float = Field(0.5, ge=0, lt=1)


def aae_parts(classifier: MVKBC, image_size: tuple[int, int], options: AAEOptions) -> tuple[nn.ModuleDict,
                                                                                          nn.ModuleDict]:
    """Per stream of ``classifier``: (style layer, decoder) and (z's, y's discriminator)."""
    n, features = len(classifier.streams), classifier.streams[0].backbone.num_features
    autoencoder = nn.ModuleDict({
        "style": nn.ModuleList(nn.Linear(features, options.latent) for _ in range(n)),
        "decoders": nn.ModuleList(Decoder(tuple(options.channels), options.latent + 2, tuple(image_size))
                                  for _ in range(n))})
    hidden = options.discriminator_hidden
    discriminators = nn.ModuleDict({"z": nn.ModuleList(LatentDiscriminator(options.latent, hidden) for _ in range(n)),
                                    "y": nn.ModuleList(LatentDiscriminator(2, hidden) for _ in range(n))})
    return autoencoder, discriminators


def one_hot_draw(p_malignant: float):
    """``draw(y)``: one-hot (benign, malignant) rows like ``y``, malignant with probability ``p_malignant``."""
    def draw(y: torch.Tensor) -> torch.Tensor:
        m = (torch.rand(len(y), device=y.device) < p_malignant).to(y.dtype)
        return torch.stack([1 - m, m], 1)
    return draw


def encoder_bce(discriminators, codes: list[torch.Tensor]) -> torch.Tensor:
    """Mean over streams of BCE(D(code), 1)."""
    return torch.stack([F.binary_cross_entropy_with_logits(d(c), torch.ones(len(c), device=c.device))
                        for d, c in zip(discriminators, codes)]).mean()


class AAEStep(MVKBCStep):
    """``models``: ``model`` (MV-KBC, the encoder q(y, z) with the style layers of ``autoencoder``),
    ``autoencoder`` (style layers, decoders), ``discriminator`` (z's and y's)."""

    def __init__(self, model: MVKBC, autoencoder: nn.ModuleDict, discriminators: nn.ModuleDict,
                 options: MVKBCOptions, aae: AAEOptions, optimizer, class_prior: float, mm_per_pixel: float = 0.0):
        super().__init__(model, options, optimizer, mm_per_pixel=mm_per_pixel)
        self.models.update(autoencoder=autoencoder, discriminator=discriminators)
        self.aae, self.class_prior = aae, class_prior

    def optimizers(self):
        betas = (self.aae.beta1, 0.999)
        return {"model": self.make_optimizer(self.models["model"].parameters()),
                "autoencoder": torch.optim.Adam(self.models["autoencoder"].parameters(), lr=self.aae.r_lr, betas=betas),
                "discriminator": torch.optim.Adam(self.models["discriminator"].parameters(), lr=self.aae.d_lr,
                                                  betas=betas)}

    def latents(self, maps, x: torch.Tensor) -> list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per view and patch: (its stream, y, z, the (B, 1, S, S) patches they come from)."""
        model, style = self.models["model"], self.models["autoencoder"]["style"]
        patches = model._split(x)
        out = []
        for v, view_maps in enumerate(maps):
            for p, m in enumerate(view_maps):
                i = p if model.share_views else v * model.patches + p
                pooled = torch.flatten(F.adaptive_avg_pool2d(m, 1), 1)
                out.append((i, model._stream(v, p).forward_head(m), style[i](pooled), patches[:, v, p]))
        return out

    def train_step(self, batch, ctx):
        lb, ulb = split_batch(batch)
        model, device = self.models["model"], ctx.device
        y, x = lb["y"].to(device), all_nodules(lb, ulb, device)
        maps = model.stream_maps(x)
        size = nodule_size(lb["mask"], self.mm_per_pixel).to(device) if self.options.size_input else None
        labelled = [[m[:len(y)] for m in view] for view in maps]
        sup = self.loss(model.logit_from_views(model.view_probs_from_maps(labelled), size).float(), y)
        latents = self.latents(maps, x)
        d_z, d_y = self.models["discriminator"]["z"], self.models["discriminator"]["y"]
        streams = [i for i, *_ in latents]
        ys, zs = [lat[1] for lat in latents], [lat[2] for lat in latents]
        disc = (discriminator_loss([d_z[i] for i in streams], zs)
                + discriminator_loss([d_y[i] for i in streams], ys, one_hot_draw(self.class_prior))) / 2
        ctx.update(disc, "discriminator")
        decoders = self.models["autoencoder"]["decoders"]
        rec = torch.stack([F.mse_loss(decoders[i](torch.cat([yp, z], 1)), patch)
                           for i, yp, z, patch in latents]).mean()
        gen = (encoder_bce([d_z[i] for i in streams], zs) + encoder_bce([d_y[i] for i in streams], ys)) / 2
        loss = sup + self.aae.rec_weight * rec + self.aae.adv_weight * gen
        ctx.update(loss, "model", "autoencoder")
        return {"loss": loss, "sup_loss": sup, "rec_loss": rec, "gen_loss": gen, "disc_loss": disc}


def fit_aae(run, record, model: MVKBC, data, stream, unlabelled, cfg, device, console, callbacks=()):
    """The one stage ``network``; returns the record."""
    from medsight.recipes.network import fit_network, make_optimizer

    autoencoder, discriminators = aae_parts(model, tuple(record.input.image_size), cfg.aae)
    prior = cfg.aae.class_prior
    if prior is None:  # the labelled training nodules' share of malignant ones, kept off 0 and 1
        prior = min(max(float((data.train.labels == 1).float().mean()), 0.01), 0.99)
    optimizer = lambda params: make_optimizer(cfg.train, params)  # noqa: E731
    step = AAEStep(model, autoencoder, discriminators, cfg.mvkbc, cfg.aae, optimizer, prior,
                   mm_per_pixel=cfg.mm_per_pixel)
    return fit_network(run, record, "network", step, data.train, data.val, cfg, device, console, callbacks,
                       stream=stream, unlabelled=unlabelled, epoch_length=cfg.semi.epoch_length)

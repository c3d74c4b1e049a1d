"""MK-SSAC (Xie et al., Medical Image Analysis 2019) in the semi recipe (``semi.algorithm: ssac``):
the network of :mod:`medsight.models.ssac` (MV-KBC's classifier C, per stream an adversarial
autoencoder R and transition layers from R's encoder into C), trained in two stages.

1. ``autoencoder`` (``ssac.pretrain`` x ``train.epochs`` epochs, at least 1; 0 skips it): R alone on
   every training nodule, labelled and unlabelled alike (each batch the labelled batch and
   ``semi.uratio`` x as many unlabelled nodules, one weak augmentation each). Per step, first the
   latent discriminators (their own optimiser): BCE of D(prior draw) against 1 and of D(code) against
   0, codes detached, the mean of the two; then the encoders and decoders (their optimiser):
   ``ssac.rec_weight`` x MSE(reconstruction, patch) + ``ssac.adv_weight`` x BCE(D(code), 1). The
   best epoch: the lowest reconstruction MSE on the validation nodules. Files in ``autoencoder/``.
2. ``network``: C and the transitions learn the labelled nodules with MV-KBC's loss (``mvkbc.penalty``,
   ``train.*``'s optimiser) on C's maps plus R's encoder features. ``ssac.r_during_c``: ``frozen``
   (default, methods.md's "train R first, then C with the transitions": R's weights and
   BatchNorm statistics stay, no unlabelled batch is drawn) or ``train`` (R keeps learning its two
   losses on all nodules in the same steps; the update adds them to the classification loss).
   ``ssac.grad_to_r`` (off) lets the classification loss reach R's encoder through the
   transitions (``train`` only). The best epoch as MV-KBC's.

Without unlabelled nodules R learns the labelled ones alone, and with ``transition_init: zero``
C's first step is MV-KBC's step exactly (tests/recipes/test_semi_ssac.py). ``semi.unsup_weight`` does
not apply (``ssac.rec_weight`` and ``ssac.adv_weight`` do). Optimisers of R and D: Adam with
``ssac.r_lr`` / ``ssac.d_lr`` and betas (``ssac.beta1``, 0.999), the usual GAN setting; every
optimiser follows ``train.scheduler``.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import AfterValidator, Field, model_validator

from medsight.config import EarlyStopping, Section
from medsight.models.ssac import SSACNet, reconstruction_parts
from medsight.recipes.mvkbc import MVKBCOptions, MVKBCStep, nodule_size


def _positive_widths(channels: list[int]) -> list[int]:
    if not channels or min(channels) < 1:
        raise ValueError("one or more positive widths")
    return channels


StageWidths = Annotated[list[int], AfterValidator(_positive_widths)]  # a decoder's or generator's stages


class SSACOptions(Section):
    channels: list[int] = Field(default_factory=lambda: [8, 16, 32, 64])  # R's 4 encoder stages (paper-size: 32-256)
    latent: int = Field(32, ge=1)  # R's code (methods.md's start: 128)
    discriminator_hidden: int = Field(64, ge=1)  # the latent discriminator's two hidden layers
    rec_weight: float = Field(1.0, ge=0)  # reconstruction MSE
    adv_weight: float = Field(1.0, ge=0)  # the encoder's adversarial (generator) BCE
    pretrain: float = Field(0.25, ge=0)  # R alone first, for this fraction of train.epochs (0: no stage)
    r_during_c: Literal["frozen", "train"] = "frozen"  # whether R keeps learning while C trains
    grad_to_r: bool = False  # the classification loss also trains R's encoder (r_during_c: train)
    transition_init: Literal["zero", "default"] = "zero"  # zero: C starts as the plain MV-KBC network
    r_lr: float = Field(1e-3, gt=0)  # Adam, R's encoders and decoders
    d_lr: float = Field(1e-3, gt=0)  # Adam, the latent discriminators
    beta1: float = Field(0.5, ge=0, lt=1)

    @model_validator(mode="after")
    def _consistent(self):
        if len(self.channels) != 4 or min(self.channels) < 1:
            raise ValueError("ssac.channels: four positive widths, one per stage of C's ResNet")
        if self.pretrain == 0 and self.r_during_c == "frozen":
            raise ValueError("ssac: with pretrain 0 and r_during_c frozen, R would never learn; "
                             "set a pretrain fraction or r_during_c: train")
        if self.grad_to_r and self.r_during_c == "frozen":
            raise ValueError("ssac.grad_to_r needs r_during_c: train (a frozen R learns nothing)")
        return self

    def pretrain_epochs(self, epochs: int) -> int:
        return 0 if self.pretrain == 0 else max(1, round(self.pretrain * epochs))


# -- the losses --------------------------------------------------------------------------------------
def reconstruction_loss(decoders, encoded, inputs) -> torch.Tensor:
    """Mean over streams of the MSE between each stream's patches and their reconstructions."""
    return torch.stack([F.mse_loss(dec(code), x) for dec, (_, code), x in zip(decoders, encoded, inputs)]).mean()


def discriminator_loss(discriminators, codes: list[torch.Tensor], draw=torch.randn_like) -> torch.Tensor:
    """Mean over streams of (BCE(D(prior draw), 1) + BCE(D(code), 0)) / 2; codes are detached, so
    only the discriminators learn from it. ``draw(code)``: a draw of the prior shaped like ``code``
    (N(0, I) by default), from torch's generator."""
    out = []
    for disc, code in zip(discriminators, codes):
        real, fake = disc(draw(code)), disc(code.detach())
        out.append((F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                    + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))) / 2)
    return torch.stack(out).mean()


def generator_loss(discriminators, codes: list[torch.Tensor]) -> torch.Tensor:
    """Mean over streams of BCE(D(code), 1): the encoder learns codes the discriminator takes for the prior."""
    out = [F.binary_cross_entropy_with_logits(d(c), torch.ones(len(c), device=c.device))
           for d, c in zip(discriminators, codes)]
    return torch.stack(out).mean()


# -- shared by both stages -----------------------------------------------------------------------------
def split_batch(batch: dict) -> tuple[dict, dict | None]:
    """(labelled batch, unlabelled batch or None) of a one- or two-stream batch."""
    return (batch["lb"], batch["ulb"]) if "lb" in batch else (batch, None)


def all_nodules(lb: dict, ulb: dict | None, device: torch.device) -> torch.Tensor:
    """The labelled nodules, then the unlabelled ones' weak view: what R learns from."""
    x = lb["x"].to(device)
    return x if ulb is None else torch.cat([x, ulb["weak"].to(device)])


def r_optimizers(net: SSACNet, decoders, discriminators, options: SSACOptions) -> dict:
    betas = (options.beta1, 0.999)
    return {"autoencoder": torch.optim.Adam([*net.encoders.parameters(), *decoders.parameters()], lr=options.r_lr,
                                            betas=betas),
            "discriminator": torch.optim.Adam(discriminators.parameters(), lr=options.d_lr, betas=betas)}


def adversarial_update(net: SSACNet, decoders, discriminators, options: SSACOptions, x: torch.Tensor, encoded,
                       ctx, extra: torch.Tensor | None = None, extra_optimizers: tuple[str, ...] = ()) -> dict:
    """R's step on the nodules ``x`` (``encoded``: ``net.encode(x)``): the discriminators' update,
    then the update of the encoders and decoders (and of ``extra_optimizers`` with the ``extra``
    loss added, C's in the joint stage). Returns the losses to log."""
    codes = [code for _, code in encoded]
    disc = discriminator_loss(discriminators, codes)
    ctx.update(disc, "discriminator")
    rec = reconstruction_loss(decoders, encoded, net.stream_inputs(x))
    gen = generator_loss(discriminators, codes)
    loss = options.rec_weight * rec + options.adv_weight * gen
    if extra is not None:
        loss = loss + extra
    ctx.update(loss, "autoencoder", *extra_optimizers)
    return {"loss": loss, "rec_loss": rec, "gen_loss": gen, "disc_loss": disc}


# -- the steps --------------------------------------------------------------------------------------
class AutoencoderStep:
    """Stage ``autoencoder``: R's encoders (in ``models["model"]``), decoders and discriminators."""

    monitor, monitor_mode = "val_loss", "min"

    def __init__(self, net: SSACNet, decoders, discriminators, options: SSACOptions):
        net.set_encoders_frozen(False)
        self.models = {"model": net, "decoder": decoders, "discriminator": discriminators}
        self.options = options

    def optimizers(self):
        return r_optimizers(*self.models.values(), self.options)

    def train_step(self, batch, ctx):
        lb, ulb = split_batch(batch)
        net, decoders, discriminators = self.models.values()
        x = all_nodules(lb, ulb, ctx.device)
        return adversarial_update(net, decoders, discriminators, self.options, x, net.encode(x), ctx)

    def validation_step(self, batch, device):
        net, decoders = self.models["model"], self.models["decoder"]
        x = batch["x"].to(device)
        return reconstruction_loss(decoders, net.encode(x), net.stream_inputs(x)).item() * len(x), len(x)

    def validation_metrics(self, outputs):
        return {"val_loss": sum(o[0] for o in outputs) / max(sum(o[1] for o in outputs), 1)}


class SSACStep(MVKBCStep):
    """Stage ``network``: C and the transitions on the labelled nodules (MV-KBC's loss), and with
    ``r_during_c: train`` R's step on all nodules in the same update."""

    def __init__(self, net: SSACNet, decoders, discriminators, options: MVKBCOptions, ssac: SSACOptions, optimizer,
                 mm_per_pixel: float = 0.0):
        super().__init__(net, options, optimizer, mm_per_pixel=mm_per_pixel)
        self.ssac, self.joint = ssac, ssac.r_during_c == "train"
        net.set_encoders_frozen(not self.joint)
        net.grad_to_encoders = ssac.grad_to_r
        if self.joint:
            self.models.update(decoder=decoders, discriminator=discriminators)

    def optimizers(self):
        net = self.models["model"]
        out = {"classifier": self.make_optimizer(net.classifier_parameters())}
        if self.joint:
            out.update(r_optimizers(net, self.models["decoder"], self.models["discriminator"], self.ssac))
        return out

    def size(self, batch: dict, device: torch.device) -> torch.Tensor | None:
        return nodule_size(batch["mask"], self.mm_per_pixel).to(device) if self.options.size_input else None

    def train_step(self, batch, ctx):
        lb, ulb = split_batch(batch)
        net, device = self.models["model"], ctx.device
        y = lb["y"].to(device)
        if not self.joint:
            sup = self.loss(self.logits(lb, device), y)
            ctx.update(sup, "classifier")
            return {"loss": sup, "sup_loss": sup}
        x = all_nodules(lb, ulb, device)
        encoded = net.encode(x)
        z = net(lb["x"].to(device), self.size(lb, device), encoded=encoded)[:, 1].float()
        sup = self.loss(z, y)
        logs = adversarial_update(net, self.models["decoder"], self.models["discriminator"], self.ssac, x, encoded,
                                  ctx, extra=sup, extra_optimizers=("classifier",))
        return {**logs, "sup_loss": sup}


def pretrain_config(cfg, epochs: int):
    """``cfg`` with ``epochs`` training epochs and the epoch chosen on the validation reconstruction
    (early stopping with the configured patience, when there is one)."""
    es = cfg.train.early_stopping
    stop = None if es is None else EarlyStopping(metric="val_loss", mode="min", patience=es.patience)
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": epochs, "early_stopping": stop})})


# -- the two stages --------------------------------------------------------------------------------
def ssac_network(classifier, info, options: SSACOptions) -> SSACNet:
    """The MV-KBC ``classifier`` with R's encoders and the transitions, for the input ``info``."""
    return SSACNet(classifier, tuple(info.image_size), tuple(options.channels), options.latent,
                   options.transition_init, options.grad_to_r)


def fit_ssac(run, record, net: SSACNet, data, stream, unlabelled, cfg, device, console, callbacks=()):
    """Stage ``autoencoder`` (unless ``ssac.pretrain`` is 0), then stage ``network``; returns the record."""
    from medsight.recipes.network import fit_network, make_optimizer

    options = cfg.ssac
    decoders, discriminators = reconstruction_parts(net, options.discriminator_hidden)
    epochs = options.pretrain_epochs(cfg.train.epochs)
    if epochs:
        step = AutoencoderStep(net, decoders, discriminators, options)
        record = fit_network(run, record, "autoencoder", step, data.train, data.val, pretrain_config(cfg, epochs),
                             device, console, callbacks, folder="autoencoder", stream=stream, unlabelled=unlabelled,
                             epoch_length=cfg.semi.epoch_length)
    optimizer = lambda params: make_optimizer(cfg.train, params)  # noqa: E731
    step = SSACStep(net, decoders, discriminators, cfg.mvkbc, options, optimizer, mm_per_pixel=cfg.mm_per_pixel)
    return fit_network(run, record, "network", step, data.train, data.val, cfg, device, console, callbacks,
                       stream=stream, unlabelled=unlabelled if step.joint else None, epoch_length=cfg.semi.epoch_length)

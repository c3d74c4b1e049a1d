"""SSAC / MK-SSAC (Xie et al., Medical Image Analysis 2019): semi-supervised adversarial classification
in MV-KBC's multi-view frame. No code is public; the layout below is medsight's (methods.md's
"reasonable start", at the sizes the config gives).

- The **reconstruction network R**, one per stream of the classifier (per patch type with
  ``share_views``, else per view and patch type): an adversarial autoencoder. :class:`Encoder`: 4
  stride-2 stages (3x3 conv, BatchNorm, LeakyReLU 0.2; ``channels`` wide), the last map flattened
  into a ``latent``-d code; :class:`Decoder`: the mirror (a linear layer back to the last map, then
  per stage an upsampling to the encoder's size at that stage and a 3x3 conv), a 1-channel patch
  with no output activation (the normalised patch is the target); :class:`LatentDiscriminator`:
  an MLP telling codes from draws of the Gaussian prior N(0, I).
- The **classifier C**: the MV-KBC network (:mod:`medsight.models.mvkbc`: streams, KBC layers, view
  weighting) whose backbones are ResNets, run stage by stage.
- The **transition layers**: per stream and stage a 1x1 conv from R's encoder stage k to C's
  backbone stage k; its output, average-pooled to the size of C's map, is added to that map
  before C's next stage. ``transition_init: zero`` (default) starts them at 0, so that the
  untrained SSAC network computes exactly what its MV-KBC classifier computes.

:class:`SSACNet` holds C, R's encoders and the transitions: everything prediction needs. Its
``forward`` has MV-KBC's signature and output, and ``stream_maps`` / ``view_probs_from_maps`` /
``logit_from_views`` MV-KBC's meaning (Grad-CAM per view works alike). The decoders and the
discriminators train R only; they are modules of their own (:func:`reconstruction_parts`).

The stream helpers here serve the other MK methods too (:mod:`medsight.recipes.semi_ladder`):
:func:`resnet_stages` (a ResNet stage by stage, with something added after each stage),
:func:`backbone_layout`, and :func:`stream_inputs` / :func:`per_view` / :func:`per_stream`
(a batch as one input per stream, and back).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medsight.models.mvkbc import MVKBC


def _conv_stage(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                         nn.LeakyReLU(0.2, inplace=True))


def stage_sizes(size: tuple[int, int], stages: int) -> list[tuple[int, int]]:
    """The map sizes after each stride-2, padding-1, 3x3 conv: ceil(n / 2)."""
    out, (h, w) = [], size
    for _ in range(stages):
        h, w = (h + 1) // 2, (w + 1) // 2
        out.append((h, w))
    return out


class Encoder(nn.Module):
    """(N, 1, S, S) -> (the maps after each stage, the (N, latent) code)."""

    def __init__(self, channels: tuple[int, ...], latent: int, image_size: tuple[int, int]):
        super().__init__()
        widths = (1, *channels)
        self.stages = nn.ModuleList(_conv_stage(widths[i], widths[i + 1], 2) for i in range(len(channels)))
        h, w = stage_sizes(image_size, len(channels))[-1]
        self.code = nn.Linear(channels[-1] * h * w, latent)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps, self.code(torch.flatten(x, 1))


class Decoder(nn.Module):
    """(N, latent) -> (N, out_channels, S, S): the encoder's stages in reverse, each size restored
    exactly (also MK-CatGAN's generator, with all of a nodule's patches as its channels)."""

    def __init__(self, channels: tuple[int, ...], latent: int, image_size: tuple[int, int], out_channels: int = 1):
        super().__init__()
        self.sizes = [tuple(image_size), *stage_sizes(image_size, len(channels))]  # input, stage 1 .. n
        self.channels = tuple(channels)
        h, w = self.sizes[-1]
        self.expand = nn.Sequential(nn.Linear(latent, channels[-1] * h * w), nn.LeakyReLU(0.2, inplace=True))
        widths = tuple(reversed(channels))  # n .. 1
        self.stages = nn.ModuleList(_conv_stage(widths[i], widths[i + 1], 1) for i in range(len(widths) - 1))
        self.out = nn.Conv2d(widths[-1], out_channels, 3, 1, 1)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        x = self.expand(code).reshape(len(code), self.channels[-1], *self.sizes[-1])
        for i, stage in enumerate(self.stages):  # to the size of stage n - 1 - i, then its width
            x = stage(F.interpolate(x, size=self.sizes[-2 - i], mode="nearest"))
        return self.out(F.interpolate(x, size=self.sizes[0], mode="nearest"))


class LatentDiscriminator(nn.Module):
    """(N, latent) -> (N,) logits of "drawn from the prior"."""

    def __init__(self, latent: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent, hidden), nn.LeakyReLU(0.2, inplace=True),
                                 nn.Linear(hidden, hidden), nn.LeakyReLU(0.2, inplace=True), nn.Linear(hidden, 1))

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.net(code)[:, 0]


def backbone_layout(backbone: nn.Module, image_size: tuple[int, int]) -> list[tuple[int, int, int]]:
    """(channels, height, width) of C's 4 backbone stages (``layer1`` .. ``layer4`` of a ResNet),
    probed with a blank patch in eval mode (no running statistic moves)."""
    if not all(hasattr(backbone, f"layer{k}") for k in range(1, 5)):
        raise TypeError(f"SSAC's transitions feed the 4 stages of a ResNet backbone, not {type(backbone).__name__}")
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        maps = resnet_stages(backbone, torch.zeros(1, 1, *image_size))
    backbone.train(was_training)
    return [tuple(m.shape[1:]) for m in maps]


def resnet_stages(backbone: nn.Module, x: torch.Tensor, additions=None) -> list[torch.Tensor]:
    """The maps after each of a ResNet's 4 stages; ``additions[k](map)`` (when given) is added to
    stage k's map before stage k + 1 reads it (SSAC's transitions, the Ladder's noise)."""
    x = backbone.act(backbone.bn1(backbone.conv1(x)))
    if not backbone.no_max_pool:
        x = backbone.maxpool(x)
    maps = []
    for k, layer in enumerate((backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4)):
        x = layer(x)
        if additions is not None:
            x = x + additions[k](x)
        maps.append(x)
    return maps


class Transitions(nn.Module):
    """One stream's 1x1 convs from R's encoder stages to C's stages."""

    def __init__(self, encoder_channels: tuple[int, ...], classifier_channels: list[int], init: str = "zero"):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(e, c, 1) for e, c in zip(encoder_channels, classifier_channels))
        if init == "zero":
            for conv in self.convs:
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)
        elif init != "default":
            raise ValueError(f"transition_init must be 'zero' or 'default', got {init!r}")

    def additions(self, encoder_maps: list[torch.Tensor]):
        """Per stage a function of C's map giving what to add to it."""
        return [lambda c, conv=conv, m=m: F.adaptive_avg_pool2d(conv(m), tuple(c.shape[-2:]))
                for conv, m in zip(self.convs, encoder_maps)]


def stream_inputs(model: MVKBC, x: torch.Tensor) -> list[torch.Tensor]:
    """(B, views * patches, S, S) -> per stream of ``model`` (rows, 1, S, S), nodule-major rows (a
    shared stream's rows: every view of the first nodule, then of the second ...)."""
    c, x = model, model._split(x)
    if c.share_views:
        return [x[:, :, p].flatten(0, 1) for p in range(c.patches)]
    return [x[:, v, p] for v in range(c.views) for p in range(c.patches)]


def per_view(model: MVKBC, outputs: list[torch.Tensor], b: int) -> list[list[torch.Tensor]]:
    """Per-stream outputs (of :func:`stream_inputs`' rows) back to ``out[v][p]``, (b, ...)."""
    c = model
    if c.share_views:
        return [[outputs[p].unflatten(0, (b, c.views))[:, v] for p in range(c.patches)] for v in range(c.views)]
    return [[outputs[v * c.patches + p] for p in range(c.patches)] for v in range(c.views)]


def per_stream(model: MVKBC, values: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """``values[v][p]`` (b, ...) back to one tensor per stream in :func:`stream_inputs`' rows."""
    c = model
    if c.share_views:
        return [torch.stack([values[v][p] for v in range(c.views)], 1).flatten(0, 1) for p in range(c.patches)]
    return [values[v][p] for v in range(c.views) for p in range(c.patches)]


class SSACNet(nn.Module):
    """MV-KBC's classifier C with R's encoders and the transition layers, one of each per stream."""

    def __init__(self, classifier: MVKBC, image_size: tuple[int, int], channels=(8, 16, 32, 64), latent: int = 32,
                 transition_init: str = "zero", grad_to_encoders: bool = False):
        super().__init__()
        if len(channels) != 4:
            raise ValueError(f"SSAC's encoder has 4 stages, one per ResNet stage of C; got channels={channels}")
        self.classifier, self.image_size = classifier, tuple(image_size)
        self.channels, self.latent = tuple(channels), latent
        n = len(classifier.streams)
        layout = [c for c, _, _ in backbone_layout(classifier.streams[0].backbone, self.image_size)]
        self.encoders = nn.ModuleList(Encoder(self.channels, latent, self.image_size) for _ in range(n))
        self.transitions = nn.ModuleList(Transitions(self.channels, layout, transition_init) for _ in range(n))
        self.freeze_encoders, self.grad_to_encoders = False, grad_to_encoders

    def set_encoders_frozen(self, frozen: bool) -> None:
        """Frozen: R's encoders take no gradient and keep their BatchNorm statistics (C's stage)."""
        self.freeze_encoders = frozen
        self.encoders.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True):
        """A frozen R keeps its BatchNorm statistics (eval mode) while C trains."""
        super().train(mode)
        if self.freeze_encoders:
            self.encoders.eval()
        return self

    def classifier_parameters(self) -> list[nn.Parameter]:
        """What C's optimiser trains: the MV-KBC network and the transitions."""
        return [*self.classifier.parameters(), *self.transitions.parameters()]

    def stream_inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        return stream_inputs(self.classifier, x)

    # -- R and C ------------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
        """Per stream R's encoder output: (its stage maps, its codes)."""
        return [encoder(u) for encoder, u in zip(self.encoders, self.stream_inputs(x))]

    def classifier_maps(self, x: torch.Tensor, encoded=None) -> list[list[torch.Tensor]]:
        """C's last feature maps ``maps[v][p]`` with R's encoder features added through the
        transitions (``encoded``: :meth:`encode` of ``x``, or of a batch that starts with ``x``'s
        nodules). Without ``grad_to_encoders`` the classifier's loss stops at the transitions."""
        encoded = self.encode(x) if encoded is None else encoded
        out = []
        for i, u in enumerate(self.stream_inputs(x)):
            maps = [m[:len(u)] for m in encoded[i][0]]
            if not self.grad_to_encoders:
                maps = [m.detach() for m in maps]
            out.append(resnet_stages(self.classifier.streams[i].backbone, u, self.transitions[i].additions(maps))[-1])
        return per_view(self.classifier, out, len(x))

    def stream_maps(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        return self.classifier_maps(x)

    def view_probs_from_maps(self, maps: list[list[torch.Tensor]]) -> torch.Tensor:
        return self.classifier.view_probs_from_maps(maps)

    def logit_from_views(self, view_probs: torch.Tensor, size: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier.logit_from_views(view_probs, size)

    def forward(self, x: torch.Tensor, size: torch.Tensor | None = None, encoded=None) -> torch.Tensor:
        z = self.logit_from_views(self.view_probs_from_maps(self.classifier_maps(x, encoded)), size)
        return torch.stack([torch.zeros_like(z), z], 1)


def reconstruction_parts(net: SSACNet, discriminator_hidden: int = 64) -> tuple[nn.ModuleList, nn.ModuleList]:
    """R's decoders and latent discriminators, one per stream of ``net``."""
    n = len(net.encoders)
    decoders = nn.ModuleList(Decoder(net.channels, net.latent, net.image_size) for _ in range(n))
    discriminators = nn.ModuleList(LatentDiscriminator(net.latent, discriminator_hidden) for _ in range(n))
    return decoders, discriminators

"""Aligned Xception (Xception-65 of DeepLabv3+, Chen et al., ECCV 2018): MB-DCNN's encoder of
coarse-SN and enhanced-SN, and a classifier (mask-CN).

Layout of ``xception`` with the defaults (channel counts at ``width`` 32; every count scales by
``width / 32``, so ``width: 8`` is a quarter-width network for the CPU):

* stem: 3x3 conv stride 2 (32) + BN + ReLU, 3x3 conv (64) + BN + ReLU;
* entry flow: three blocks to 128, 256 and 728 channels;
* middle flow: ``middle_blocks`` blocks at 728 channels (16: Xception-65; 8: Xception-41);
* exit flow: a block to 728, 1024, 1024 channels, then one of 1536, 1536, 2048 channels without a
  shortcut and with a ReLU after every batch norm (the features end in a ReLU);
* head: global average pooling, dropout, a linear classifier ``fc``.

A block is three separable convolutions (depthwise 3x3 conv + BN, pointwise 1x1 conv + BN), each
after a ReLU, plus the block's input (a 1x1 conv + BN where the channels or the stride change).
A block that subsamples does it in its third depthwise convolution, with stride 2: the "aligned"
change to Xception, whose entry flow uses max pooling.

``output_stride`` 32 (a classifier), 16 or 8 (a segmentation encoder): a block whose stride would
go past it keeps stride 1 and every later block dilates its depthwise convolutions by the stride
given up (TF DeepLab's and timm's rule: at output stride 16 only the last block is dilated, by 2).
:meth:`XceptionClassifier.forward_levels` gives the stride-4 features for DeepLabv3+'s decoder
shortcut (the second separable convolution of the second entry block, before its strided third, as
TF DeepLab and the MB-DCNN authors take it) and the last features.

Weights from a local file (:func:`medsight.models.pretrained.load_pretrained`): timm's
``xception65`` / ``xception41`` names are this module's own (``stem.0.conv``, ``blocks.N.stack.convK.
conv_dw`` ...; ``head.fc`` becomes ``fc``), and :meth:`XceptionClassifier.foreign_key` maps the
MB-DCNN authors' DeepLab backbone (``backbone.conv1`` ..., ``blockN.sepconvK.depthwise``,
``blockN.skip`` / ``skipbn``, the exit convolutions ``conv3..conv5``). Batch norms use TF's epsilon
1e-3, as those weights were trained with. Two differences from the authors' code: their middle-flow
shortcut adds the block's input after the first ReLU (an in-place ReLU reaches it), here the input
itself as in TF DeepLab; and their mask-CN is Chollet's original Xception (max pooling, 8 middle
blocks, dilated exit flow), whose checkpoints do not fit this layout, where ``xception`` with
``output_stride: 16`` stands in for it.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from medsight.models.registry import register_model

BN_EPS = 1e-3
STEM = (32, 64)
ENTRY = (128, 256, 728)  # each block strided
MIDDLE = 728
EXIT = ((728, 1024, 1024), (1536, 1536, 2048))
LOW_LEVEL_BLOCK = 1  # the entry block whose second convolution gives the stride-4 features


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class ConvBN(nn.Module):
    """A convolution without bias, its batch norm, and a ReLU when ``relu``."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, relu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, bias=False)
        self.bn = _bn(c_out)
        self.act = nn.ReLU() if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SeparableConv(nn.Module):
    """Depthwise 3x3 conv + BN, pointwise 1x1 conv + BN; ``relu``: "before" the depthwise
    convolution (residual blocks) or "after" each batch norm (the last block)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, dilation: int = 1, relu: str = "before"):
        super().__init__()
        self.relu = relu
        self.conv_dw = nn.Conv2d(c_in, c_in, 3, stride, padding=dilation, dilation=dilation, groups=c_in, bias=False)
        self.bn_dw = _bn(c_in)
        self.conv_pw = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn_pw = _bn(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        after = self.relu == "after"
        if not after:
            x = torch.relu(x)  # not in place: the block's input also feeds its shortcut
        x = self.bn_dw(self.conv_dw(x))
        x = torch.relu(x) if after else x
        x = self.bn_pw(self.conv_pw(x))
        return torch.relu(x) if after else x


class XceptionBlock(nn.Module):
    """Three separable convolutions (the third with ``stride``) and the shortcut (module doc)."""

    def __init__(self, c_in: int, c_outs: tuple[int, int, int], stride: int = 1, dilation: int = 1,
                 residual: bool = True):
        super().__init__()
        self.residual = residual
        c_out = c_outs[-1]
        self.shortcut = ConvBN(c_in, c_out, 1, stride, relu=False) if residual and (c_in != c_out or stride > 1) \
            else None
        relu = "before" if residual else "after"
        self.stack = nn.Sequential()
        for k, c in enumerate(c_outs, 1):
            self.stack.add_module(f"conv{k}", SeparableConv(c_in, c, stride if k == 3 else 1, dilation, relu))
            c_in = c

    def forward_inner(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the block's output, the output of its second separable convolution)."""
        inner = self.stack.conv2(self.stack.conv1(x))
        y = self.stack.conv3(inner)
        if self.residual:
            y = y + (x if self.shortcut is None else self.shortcut(x))
        return y, inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_inner(x)[0]


def block_layout(middle_blocks: int) -> list[tuple[tuple[int, int, int], int, bool]]:
    """(channels of the three convolutions, stride, residual) of every block at width 32."""
    entry = [((c, c, c), 2, True) for c in ENTRY]
    middle = [((MIDDLE,) * 3, 1, True)] * middle_blocks
    return entry + middle + [(EXIT[0], 2, True), (EXIT[1], 1, False)]


class XceptionClassifier(nn.Module):
    """The registry classifier interface (``forward_features``, ``forward_head``,
    ``reset_classifier``, ``num_features``, ``cam_layer``) plus the segmentation encoder's
    ``forward_levels`` and ``level_channels``."""

    cam_layer = "blocks"

    def __init__(self, in_channels: int = 3, num_classes: int = 2, width: int = 32, middle_blocks: int = 16,
                 output_stride: int = 32, dropout: float = 0.0):
        super().__init__()
        if width < 1 or middle_blocks < 0:
            raise ValueError(f"width must be >= 1 and middle_blocks >= 0, got {width} and {middle_blocks}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")

        def scaled(c: int) -> int:
            return max(1, round(c * width / STEM[0]))

        self.stem = nn.Sequential(ConvBN(in_channels, scaled(STEM[0]), 3, 2), ConvBN(scaled(STEM[0]), scaled(STEM[1]), 3))
        self.blocks = nn.Sequential()
        c_in, stride, dilation = scaled(STEM[1]), 2, 1
        for channels, block_stride, residual in block_layout(middle_blocks):
            block_dilation = dilation
            if stride * block_stride > output_stride:  # keep the resolution, dilate what follows
                dilation, block_stride = dilation * block_stride, 1
            stride *= block_stride
            c_outs = tuple(scaled(c) for c in channels)
            self.blocks.append(XceptionBlock(c_in, c_outs, block_stride, block_dilation, residual))
            c_in = c_outs[-1]
        self.num_features = c_in
        self.level_channels = (scaled(ENTRY[LOW_LEVEL_BLOCK]), c_in)  # (stride-4 features, last features)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc: nn.Module = nn.Linear(c_in, num_classes) if num_classes else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_levels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(stride-4 features, last features) for a segmentation decoder."""
        x = self.stem(x)
        for block in self.blocks[:LOW_LEVEL_BLOCK]:
            x = block(x)
        x, low = self.blocks[LOW_LEVEL_BLOCK].forward_inner(x)
        return low, self.blocks[LOW_LEVEL_BLOCK + 1:](x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(features.mean((2, 3))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """A new classifier for ``num_classes``; 0 removes it (``forward_head`` gives the pooled features)."""
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def foreign_key(self, name: str) -> str:
        """A key of the MB-DCNN authors' Xception (their DeepLab's ``backbone.*``) as this model
        names it; other keys (timm's, which are this model's own) come back unchanged."""
        name = name.removeprefix("backbone.")
        last = len(self.blocks) - 1
        stem = re.fullmatch(r"(conv|bn)([12])\.(.+)", name)
        if stem:
            kind, k, rest = stem.groups()
            return f"stem.{int(k) - 1}.{'conv' if kind == 'conv' else 'bn'}.{rest}"
        exit_conv = re.fullmatch(r"conv([345])\.(.+)", name)  # the last block's three convolutions
        if exit_conv:
            return f"blocks.{last}.stack.conv{int(exit_conv[1]) - 2}.{_separable(exit_conv[2])}"
        block = re.fullmatch(r"block(\d+)\.(skipbn|skip|sepconv[123])\.(.+)", name)
        if block:
            n, part, rest = block.groups()
            where = f"blocks.{int(n) - 1}"
            if part == "skip":
                return f"{where}.shortcut.conv.{rest}"
            if part == "skipbn":
                return f"{where}.shortcut.bn.{rest}"
            return f"{where}.stack.conv{part[-1]}.{_separable(rest)}"
        return name


def _separable(rest: str) -> str:
    """The authors' names inside a separable convolution (depthwise, bn1, pointwise, bn2) as ours."""
    head, _, tail = rest.partition(".")
    return {"depthwise": "conv_dw", "bn1": "bn_dw", "pointwise": "conv_pw", "bn2": "bn_pw"}.get(head, head) \
        + (f".{tail}" if tail else "")


@register_model
def xception(in_channels: int = 3, num_classes: int = 2, spatial_dims: int = 2, **options) -> XceptionClassifier:
    """Aligned Xception-65 (``middle_blocks: 8`` for Xception-41, ``width`` < 32 for a thinner one)."""
    if spatial_dims != 2:
        raise TypeError("xception is 2D only")
    return XceptionClassifier(in_channels, num_classes, **options)

"""Load ImageNet weights from a local file into the registry's ResNet-family and Xception models.

Nothing is downloaded: point :func:`load_pretrained` at a file you have (safetensors, or a torch
file, read with ``weights_only=True``). No recipe needs pretrained weights.

Key names. MONAI's ResNet names its modules as torchvision does (``conv1``, ``bn1``,
``layerN.M.conv1..3`` / ``bn1..3``, ``layerN.M.downsample.0`` = the 1x1 projection convolution and
``.1`` its batch norm, ``fc``), and timm's ResNets use the same names, so most keys map onto
themselves. The mapping also

* strips wrapper prefixes (``module.`` from DataParallel / DDP, ``model.``) and unwraps checkpoint
  dicts holding the weights under ``state_dict``, ``model`` or ``state_dict_ema``;
* renames ``head.fc.*`` (timm's newer heads) to ``fc.*``;
* maps timm's SE-ResNet layers (``se.fc1`` / ``se.fc2``, 1x1 convolutions) onto MONAI's
  ``ChannelSELayer`` (``se.fc.0`` / ``se.fc.2``, linear layers), reshaping the weights;
* then applies the model's own ``foreign_key(name)`` where its family has one (``xception``: the
  MB-DCNN authors' names).

Adaptations (reported in ``LoadReport.adapted``):

* first convolution with another number of input channels: 1 channel = the sum of the RGB
  filters; more channels = the RGB filters followed by their mean for every extra channel (4
  channels = RGB + mean, as MB-DCNN's mask-CN initialises its mask channel); 2 channels = the
  first two filters scaled by 3/2 (keeps the response to a grey image);
* 2D kernels into a 3D model: inflated along depth and divided by the depth (I3D-style, a
  constant volume gives the 2D response);
* classifier (``fc.*``) with another class count: skipped (kept at its initialisation) and listed
  in ``LoadReport.skipped``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from medsight.errors import InputError

CLASSIFIER_PREFIX = "fc."
_WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_state_dict")
_PREFIXES = ("module.", "model.")
_RENAMES = ((".se.fc1.", ".se.fc.0."), (".se.fc2.", ".se.fc.2."))


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did, by the model's key names (``unexpected``: the file's)."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # model keys the file has nothing for
    unexpected: list[str] = field(default_factory=list)  # file keys the model has no place for
    adapted: dict[str, str] = field(default_factory=dict)  # model key -> how the file's tensor was changed
    skipped: dict[str, str] = field(default_factory=dict)  # model key -> why the file's tensor was not used

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        lines += [f"adapted {k}: {v}" for k, v in self.adapted.items()]
        lines += [f"skipped {k}: {v}" for k, v in self.skipped.items()]
        if self.missing:
            lines.append(f"missing ({len(self.missing)}): {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected ({len(self.unexpected)}): {', '.join(self.unexpected)}")
        return "\n".join(lines)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a local weight file: ``.safetensors``, else a torch file (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "weight file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # both loaders raise several types for damaged or pickled-object files
        raise InputError(path, f"not a readable weight file ({type(exc).__name__}: {exc})") from None
    return _unwrap(state, path)


def _unwrap(state, path) -> dict[str, torch.Tensor]:
    for _ in range(3):  # {"state_dict": {...}} and similar checkpoint wrappers
        if isinstance(state, Mapping) and not any(isinstance(v, torch.Tensor) for v in state.values()):
            inner = next((state[k] for k in _WRAPPER_KEYS if isinstance(state.get(k), Mapping)), None)
            if inner is None:
                break
            state = inner
    if not isinstance(state, Mapping):
        raise InputError(path, f"holds a {type(state).__name__}, not a state dict")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def map_key(name: str) -> str:
    """A torchvision / timm ResNet key as MONAI's ResNet (and our classifiers) name it."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix):], True
    if name.startswith("head.fc."):
        name = CLASSIFIER_PREFIX + name[len("head.fc."):]
    for old, new in _RENAMES:
        name = name.replace(old, new)
    return name


def adapt_input_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A convolution weight ``(out, c, *k)`` for ``channels`` input channels (rules in the module doc)."""
    c = weight.shape[1]
    if channels == c:
        return weight
    if channels == 1:
        return weight.sum(1, keepdim=True)
    if channels > c:
        mean = weight.mean(1, keepdim=True)
        return torch.cat([weight] + [mean] * (channels - c), 1)
    return weight[:, :channels] * (c / channels)


def _adapt(key: str, src: torch.Tensor, dst: torch.Tensor) -> tuple[torch.Tensor | None, str]:
    """``src`` shaped like ``dst``, and what was done ('' = nothing), or ``None`` and why not."""
    if src.shape == dst.shape:
        return src, ""
    if key.startswith(CLASSIFIER_PREFIX):
        return None, f"classifier shape {tuple(src.shape)} in the file, {tuple(dst.shape)} in the model"
    notes = []
    if src.ndim >= 3 and src.ndim + 1 == dst.ndim:  # 2D kernel into a 3D convolution
        depth = dst.shape[2]
        src = src.unsqueeze(2).repeat_interleave(depth, 2) / depth
        notes.append(f"inflated to depth {depth}")
    if src.ndim >= 3 and src.ndim == dst.ndim and src.shape[0] == dst.shape[0] and src.shape[2:] == dst.shape[2:] \
            and src.shape[1] != dst.shape[1]:
        notes.append(f"input channels {src.shape[1]} -> {dst.shape[1]}")
        src = adapt_input_channels(src, dst.shape[1])
    short, long = sorted((src.shape, dst.shape), key=len)
    if src.shape != dst.shape and long[:len(short)] == short and all(n == 1 for n in long[len(short):]):
        notes.append(f"reshaped {tuple(src.shape)} -> {tuple(dst.shape)}")  # 1x1 convolution <-> linear
        src = src.reshape(dst.shape)
    if src.shape != dst.shape:
        return None, f"shape {tuple(src.shape)} in the file, {tuple(dst.shape)} in the model"
    return src, "; ".join(notes)


def load_pretrained(model: nn.Module, path: str | Path | Mapping[str, torch.Tensor], strict: bool = False,
                    ) -> LoadReport:
    """Copy the weights of a local file (or a state dict) into ``model``; return a :class:`LoadReport`.

    Keys are mapped with :func:`map_key` (then the model's ``foreign_key``, where it has one) and
    tensors adapted as the module doc says. With
    ``strict=True`` anything missing, unexpected or skipped other than the classifier raises
    :class:`~medsight.errors.InputError`; otherwise the model keeps its initialisation there.
    """
    source = path if isinstance(path, Mapping) else read_state_dict(path)
    where = None if isinstance(path, Mapping) else path
    target = model.state_dict()
    report = LoadReport()
    new_state: dict[str, torch.Tensor] = {}
    family_key = getattr(model, "foreign_key", lambda key: key)
    for name, tensor in source.items():
        key = family_key(map_key(name))
        if key not in target:
            report.unexpected.append(name)
            continue
        adapted, note = _adapt(key, tensor, target[key])
        if adapted is None:
            report.skipped[key] = note
            continue
        if note:
            report.adapted[key] = note
        new_state[key] = adapted.to(target[key].dtype)
        report.loaded.append(key)
    report.missing = [k for k in target if k not in new_state and k not in report.skipped
                      and not k.endswith("num_batches_tracked")]
    if strict:
        problems = report.missing + report.unexpected + [k for k in report.skipped
                                                           if not k.startswith(CLASSIFIER_PREFIX)]
        if problems:
            raise InputError(where, f"weights do not fit the model ({len(problems)} keys):\n{report}")
    model.load_state_dict(new_state, strict=False)
    return report

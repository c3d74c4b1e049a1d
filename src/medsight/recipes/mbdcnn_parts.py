"""MB-DCNN's pieces: the segmentation loss, the batches of its three stages, the localisation map
and the test-time averaging. :mod:`medsight.recipes.mbdcnn` composes them into the recipe.

The segmentation loss (the authors' ``net/loss.py``), for foreground probabilities ``p`` and a
0/1 mask ``t`` of one image:

    Dice(p, t)  = 1 - 2 sum(p t) / (sum p + sum t + 1e-5)
    L_dice      = (Dice(1 - p, 1 - t) + Dice(p, t)) / 2                 (background and foreground)
    L_rank      = mean over the K x K pairs (n, m) of max(0, p_n - p_m + margin)

where n runs over the K background pixels of highest ``p`` and m over the K foreground pixels of
lowest ``p`` (K = 30, margin 0.3): the hardest pixels of each side are pushed ``margin`` apart.
Both are averaged over the images of a batch, and the loss is ``L_dice + w L_rank`` (w = 0.05).
An image with fewer than K pixels on a side ranks the ones it has (the authors' ``topk`` pads
with zeros instead); one without a side adds no rank loss.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from medsight.engine import Stream
from medsight.engine.streams import batch_indices
from medsight.recipes.prepare import Loaded, normalise
from medsight.recipes.segmentation import mask_scores, mask_validation_metrics
from medsight.transforms.augment import augment_batch


# -- the loss ------------------------------------------------------------------------------------------
def dice_loss(p: torch.Tensor, t: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """(B,) soft Dice loss of probabilities ``p`` against 0/1 targets ``t`` (any shape after B)."""
    p, t = p.flatten(1), t.flatten(1).to(p.dtype)
    return 1 - 2 * (p * t).sum(1) / (p.sum(1) + t.sum(1) + smooth)


def two_sided_dice(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The mean over the batch of the background and foreground Dice losses, averaged."""
    t = t.to(p.dtype)
    return (dice_loss(1 - p, 1 - t).mean() + dice_loss(p, t).mean()) / 2


def rank_loss(p: torch.Tensor, t: torch.Tensor, pixels: int = 30, margin: float = 0.3) -> torch.Tensor:
    """The hinge between the ``pixels`` most foreground-like background pixels and the ``pixels``
    least foreground-like foreground pixels of each image (module doc), averaged over the batch."""
    p, fg = p.flatten(1), t.flatten(1) > 0
    k = min(pixels, p.shape[1])
    neg = p.masked_fill(fg, float("-inf")).topk(k, 1).values  # (B, k): highest background scores
    pos = -(-p).masked_fill(~fg, float("-inf")).topk(k, 1).values  # (B, k): lowest foreground scores
    valid = torch.isfinite(neg)[:, :, None] & torch.isfinite(pos)[:, None, :]
    neg, pos = neg.nan_to_num(0.0, neginf=0.0), pos.nan_to_num(0.0, posinf=0.0)
    hinge = torch.relu(neg[:, :, None] - pos[:, None, :] + margin) * valid
    per_image = hinge.sum((1, 2)) / valid.sum((1, 2)).clamp_min(1)
    return per_image.mean()


def segmentation_loss(logits: torch.Tensor, mask: torch.Tensor, rank_weight: float = 0.05, pixels: int = 30,
                      margin: float = 0.3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, Dice part, rank part) for one-channel logits (B, 1, H, W) and masks (B, 1, H, W)."""
    p = torch.sigmoid(logits.float())
    dice = two_sided_dice(p, mask)
    rank = rank_loss(p, mask, pixels, margin) if rank_weight > 0 else p.new_zeros(())
    return dice + rank_weight * rank, dice, rank


# -- the localisation map ------------------------------------------------------------------------------
def localisation_maps(maskcn: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, 1, h, w): mask-CN's class activation map of its predicted class at feature resolution,
    divided by its largest positive value (negative evidence kept, as the authors' code does)."""
    from medsight.explain import cam

    maps = cam(maskcn, x).float()
    peak = maps.clamp_min(0).flatten(1).amax(1).clamp_min(1e-6)
    return (maps / peak.view(-1, 1, 1)).unsqueeze(1)


# -- batches -------------------------------------------------------------------------------------------
def stage_batch(loaded: Loaded, coarse: torch.Tensor | None, idx: torch.Tensor, info, device,
                augment=None, generator: torch.Generator | None = None, join: bool = False) -> dict:
    """One batch ``{"x", "mask", "coarse", "y"}`` of the cases ``idx``: normalised images, the true
    masks (B, 1, H, W) where ``loaded`` has them, the coarse masks (B, 1, H, W) where given, all
    moved alike by ``augment``. ``join``: the coarse mask becomes the image's 4th channel (mask-CN)."""
    x = normalise(loaded.images[idx].to(device), info.mean, info.std)
    planes = [m[idx].to(device).unsqueeze(1).float() for m in (loaded.masks, coarse) if m is not None]
    masks = torch.cat(planes, 1) if planes else None
    if augment is not None:
        x, masks = augment_batch(x, masks, augment, generator)
    mask = masks[:, :1] if loaded.masks is not None else None
    cmask = masks[:, -1:] if coarse is not None else None
    if join:
        x = torch.cat([x, cmask], 1)
    return {"x": x, "mask": mask, "coarse": cmask, "y": loaded.labels[idx]}


def stage_stream(loaded: Loaded, coarse: torch.Tensor | None, info, augment, batch_size: int, device,
                 join: bool = False) -> Stream:
    """Shuffled, augmented training batches of :func:`stage_batch`."""
    return Stream(len(loaded.ids), batch_size,
                  lambda idx, gen: stage_batch(loaded, coarse, idx, info, device, augment, gen, join))


def stage_batches(loaded: Loaded, coarse: torch.Tensor | None, info, batch_size: int,
                  join: bool = False) -> Iterator[dict]:
    """Validation batches of :func:`stage_batch`, in order, on the CPU, not augmented."""
    for idx in batch_indices(len(loaded.ids), batch_size):
        yield stage_batch(loaded, coarse, idx, info, "cpu", join=join)


# -- the segmentation step -------------------------------------------------------------------------------
class SegmentationStep:
    """Dice + rank loss (coarse-SN, or enhanced-SN with ``guide``: the batch's localisation map);
    validation scores the masks thresholded at ``threshold`` per image (JA picks the epoch)."""

    monitor, monitor_mode = "JA", "max"

    def __init__(self, model, loss: Callable, threshold: float, optimizer,
                 guide: Callable[[dict, torch.device], torch.Tensor] | None = None):
        self.models = {"model": model}
        self.loss, self.threshold, self.make_optimizer, self.guide = loss, threshold, optimizer, guide

    def optimizers(self):
        return {"model": self.make_optimizer(self.models["model"].parameters())}

    def logits(self, batch: dict, device) -> torch.Tensor:
        x = batch["x"].to(device)
        model = self.models["model"]
        return model(x) if self.guide is None else model(x, self.guide(batch, device))

    def train_step(self, batch, ctx):
        total, dice, rank = self.loss(self.logits(batch, ctx.device), batch["mask"].to(ctx.device))
        ctx.update(total)
        return {"loss": total, "dice_loss": dice, "rank_loss": rank}

    def validation_step(self, batch, device):
        logits = self.logits(batch, device).float()
        loss = self.loss(logits, batch["mask"].to(device))[0].item() * len(logits)
        return mask_scores(logits, batch["mask"], self.threshold), loss

    def validation_metrics(self, outputs):
        return mask_validation_metrics(outputs)


# -- test-time averaging -----------------------------------------------------------------------------------
VIEWS = ((0, False, False), (1, False, False), (2, False, False), (3, False, False), (0, True, False),
         (0, False, True))  # (quarter turns, horizontal flip, vertical flip): identity, 3 rotations, 2 flips


def _view(x: torch.Tensor, view, inverse: bool = False) -> torch.Tensor:
    """The flips, then the quarter turns, of ``view`` (``inverse``: undone in the reverse order)."""
    turns, hflip, vflip = view
    flips = [d for d, on in ((-1, hflip), (-2, vflip)) if on]
    if inverse:
        x = torch.rot90(x, -turns, (-2, -1)) if turns else x
        return x.flip(flips) if flips else x
    x = x.flip(flips) if flips else x
    return torch.rot90(x, turns, (-2, -1)) if turns else x


def segmentation_tta(z: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], views: int = 6,
                     scales=(1.0,)) -> torch.Tensor:
    """``fn`` (per-pixel probabilities of a batch) averaged over ``views`` (1: the image; 6: it, its
    three quarter turns and two flips) at each of ``scales`` (the input resized by that factor),
    every output mapped back to the input's grid first. ``z`` may carry extra per-pixel channels
    (a guide map) that move with the image."""
    size = tuple(z.shape[2:])
    total = 0.0
    for scale in scales:
        scaled = z if scale == 1 else F.interpolate(
            z, size=tuple(max(16, round(s * scale)) for s in size), mode="bilinear", align_corners=False)
        for view in VIEWS[:views]:
            y = _view(fn(_view(scaled, view)), view, inverse=True)
            total = total + (y if scale == 1 else F.interpolate(y, size=size, mode="bilinear", align_corners=False))
    return total / (len(scales) * views)

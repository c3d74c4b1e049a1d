"""The unlabelled losses and training steps of the semi-supervised recipe (:mod:`medsight.recipes.semi`)
on the MV-KBC network. Every step's supervised part is MV-KBC's own (:class:`MVKBCStep`: the
configured penalty loss on the fused logit), so a step without an unlabelled batch is the
supervised step, and a run without unlabelled cases trains the same weights as ``recipe: mvkbc``.

- **Mean Teacher** (Tarvainen & Valpola 2017): the teacher is an EMA of the student (decay 0.999,
  with the warm-up min(d, 1 - 1/(t+1))); the student's and the teacher's malignancy probabilities
  on two independent weak augmentations of each unlabelled nodule should agree (squared
  difference, USB's ``mse`` consistency on softmax probabilities, which for two classes is the
  squared difference of p), weighted by a ramp-up. The teacher is no optimiser's: it gets no
  gradient; it is what validation scores and prediction uses.
- **FixMatch** (Sohn et al. 2020): the network's prediction on a weak augmentation, computed without
  gradient, gives a hard pseudo-label where its confidence max(p, 1 - p) reaches the threshold
  (0.95); the prediction on a strong augmentation of the same nodule learns it (binary
  cross-entropy, the masked mean over the unlabelled batch, as USB's ``ce`` consistency).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medsight.engine import EMA, LossWeight
from medsight.recipes.mvkbc import MVKBCOptions, MVKBCStep


# -- the unlabelled losses -------------------------------------------------------------------------------
def consistency_loss(student_z: torch.Tensor, teacher_z: torch.Tensor) -> torch.Tensor:
    """Mean over nodules of (sigmoid(student) - sigmoid(teacher))^2; the teacher's side is a target
    (no gradient flows into it)."""
    return (torch.sigmoid(student_z) - torch.sigmoid(teacher_z.detach())).pow(2).mean()


def fixmatch_loss(strong_z: torch.Tensor, weak_z: torch.Tensor, threshold: float = 0.95
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, mask): the hard pseudo-label of the weak view's probability p (malignant where
    p >= 0.5), kept where max(p, 1 - p) >= ``threshold``; the loss is the binary cross-entropy of the
    strong view's logit against it, averaged over all unlabelled nodules (the masked ones count 0).
    The pseudo-labels are constants: no gradient reaches the weak view."""
    p = torch.sigmoid(weak_z.detach())
    pseudo = (p >= 0.5).float()
    mask = (torch.maximum(p, 1 - p) >= threshold).float()
    loss = (F.binary_cross_entropy_with_logits(strong_z, pseudo, reduction="none") * mask).mean()
    return loss, mask


def view_batch(ulb: dict, view: str) -> dict:
    """One augmented view of an unlabelled batch, shaped as a labelled batch for the network."""
    return {"x": ulb[view], "mask": ulb.get("mask")}


def joined(*batches: dict) -> dict:
    """Batches side by side (one forward pass through the network)."""
    masks = [b.get("mask") for b in batches]
    return {"x": torch.cat([b["x"] for b in batches]),
            "mask": None if any(m is None for m in masks) else torch.cat(masks)}


# -- the steps ------------------------------------------------------------------------------------------
class MeanTeacherStep(MVKBCStep):
    """The student is ``models["model"]`` (its optimiser trains it), the teacher ``models["teacher"]``."""

    def __init__(self, model, options: MVKBCOptions, optimizer, weight: LossWeight, decay: float = 0.999,
                 warmup: bool = True, mm_per_pixel: float = 0.0):
        super().__init__(model, options, optimizer, mm_per_pixel=mm_per_pixel)
        self.models["teacher"] = EMA(model, decay, warmup)
        self.weight = weight

    @property
    def teacher(self) -> torch.nn.Module:
        return self.models["teacher"].module

    def train_step(self, batch, ctx):
        lb, ulb = batch["lb"], batch["ulb"]
        y, device = lb["y"].to(ctx.device), ctx.device
        if ulb is None:
            sup, unsup = self.loss(self.logits(lb, device), y), torch.zeros((), device=device)
        else:
            z = self.logits(joined(lb, view_batch(ulb, "student")), device)
            sup = self.loss(z[:len(y)], y)
            with torch.no_grad():
                target = self.logits(view_batch(ulb, "teacher"), device, self.teacher)
            unsup = consistency_loss(z[len(y):], target)
        weight = self.weight(ctx.step)
        loss = sup + weight * unsup
        ctx.update(loss)
        self.models["teacher"].update(self.models["model"])
        return {"loss": loss, "sup_loss": sup, "unsup_loss": unsup, "unsup_weight": weight}

    def validation_step(self, batch, device):
        y = batch["y"].to(device)
        z = self.logits(batch, device, self.teacher)
        return torch.sigmoid(z).cpu(), y.cpu(), self.loss(z, y).item() * len(y)


class FixMatchStep(MVKBCStep):
    def __init__(self, model, options: MVKBCOptions, optimizer, weight: LossWeight, threshold: float = 0.95,
                 mm_per_pixel: float = 0.0):
        super().__init__(model, options, optimizer, mm_per_pixel=mm_per_pixel)
        self.weight, self.threshold = weight, threshold

    def train_step(self, batch, ctx):
        lb, ulb = batch["lb"], batch["ulb"]
        y, device = lb["y"].to(ctx.device), ctx.device
        if ulb is None:
            sup, unsup = self.loss(self.logits(lb, device), y), torch.zeros((), device=device)
            used = torch.zeros((), device=device)
        else:
            with torch.no_grad():  # the pseudo-labels' view: a separate pass, so nothing flows back into it
                weak = self.logits(view_batch(ulb, "weak"), device)
            z = self.logits(joined(lb, view_batch(ulb, "strong")), device)
            sup = self.loss(z[:len(y)], y)
            unsup, mask = fixmatch_loss(z[len(y):], weak, self.threshold)
            used = mask.mean()
        weight = self.weight(ctx.step)
        loss = sup + weight * unsup
        ctx.update(loss)
        return {"loss": loss, "sup_loss": sup, "unsup_loss": unsup, "pseudo_labelled": used}

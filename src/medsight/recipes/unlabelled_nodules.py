"""Unlabelled nodules from other CT volumes (recipe ``semi``'s ``data.unlabelled``), with masks from
a nodule segmenter (``data.unlabelled_masks``).

A LUNA16 / Tianchi ``annotations.csv`` nodule is a centre and a diameter in a whole CT; the MV-KBC
views need a nodule mask (HVV: the nodule's voxels, HS: its surroundings). The segmenter is a
finished run of recipe ``segmentation`` on 3D nodule boxes (``data.preprocess: nodule_crop``,
``configs/lidc_voi_nodule_unet.yaml``, trained on the LIDC masks). Each nodule becomes a VOI like
the LIDC ones: the box of the segmenter's ``size_mm`` around the annotated centre on the CT's own
voxels (air beyond the CT), and as its mask the segmenter's probabilities, interpolated back onto
those voxels, at the segmenter's ``predict.threshold``. A nodule the segmenter finds nothing in is
left out (and counted). Everything is checked before anything is written: a missing folder, a
folder that is not a finished segmenter run, or a run whose input is not a one-channel 3D box is
one error naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from medsight.data import open_dataset
from medsight.data.base import Dataset, Sample
from medsight.errors import InputError, MedsightError
from medsight.progress import track
from medsight.recipes.common import preprocessor
from medsight.recipes.prepare import normalise
from medsight.rundir import CONFIG_FILE, RunDir
from medsight.transforms.preprocess import nodule_crop_centre, nodule_crop_mm
from medsight.transforms.volume import crop_centered, uncrop

KEY = "data.unlabelled_masks"


def open_segmenter(run_dir: str | Path, device: str = "cpu"):
    """The restored segmentation recipe of a finished nodule segmenter run, or an InputError naming
    the folder or file that is not one."""
    from medsight.recipes import load_recipe  # the recipe list imports recipe semi, which imports this

    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise InputError(run.path, f"{KEY}: folder not found")
    try:
        record = run.finished_record()  # config.yaml and run.json present, training finished
    except InputError as exc:
        raise InputError(exc.path, f"{KEY}: {exc.problem}") from None
    config = run.path / CONFIG_FILE
    raw = run.read_config()
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    if raw.get("recipe") != "segmentation" or data.get("preprocess") != "nodule_crop":
        raise InputError(config, f"{KEY}: a run of recipe {raw.get('recipe')!r} with data.preprocess "
                                 f"{data.get('preprocess', 'resize')!r}, not a nodule segmenter (recipe segmentation, "
                                 "data.preprocess: nodule_crop; configs/lidc_voi_nodule_unet.yaml)")
    size, info = tuple(data.get("image_size") or ()), record.input
    if len(size) != 3 or info.channels != 1 or tuple(info.image_size) != size:
        raise InputError(config, f"{KEY}: the segmenter's input is {info.channels} channel(s) of "
                                 f"{'x'.join(map(str, info.image_size))} (data.image_size {list(size)}); a nodule "
                                 "segmenter takes one channel of CT in a 3D box (depth, height, width)")
    try:
        return load_recipe(run.path, device=device, console=Console(stderr=True, quiet=True))
    except MedsightError as exc:
        raise InputError(run.path, f"{KEY}: cannot read the segmenter run ({exc})") from None


@torch.no_grad()
def segmented_voi(recipe, sample: Sample, image: np.ndarray) -> Sample | None:
    """``sample`` (a nodule in the CT ``image`` (1, D, H, W), centred on its annotated centre) as a
    VOI with the segmenter's mask on the CT's voxels; None when the mask is empty."""
    cfg = recipe.cfg
    size_mm = nodule_crop_mm(cfg.data.preprocess_options)
    box_input, _ = preprocessor(cfg, channels=1)(image, None, sample)
    x = normalise(torch.from_numpy(box_input)[None], recipe.record_.input.mean, recipe.record_.input.std)
    recipe.model_.eval()
    prob = recipe.forward(x.to(recipe.device_)).float().cpu()[0, 0].numpy()
    centre = nodule_crop_centre(image, sample)
    voi = crop_centered(image[0], centre, size_mm, sample.spacing)  # the CT's own voxels, air beyond
    n = np.array(voi.shape)
    start = np.floor(centre + 0.5) - n // 2  # where crop_centered put the box's first voxel
    mask = uncrop(prob, centre - start, size_mm, sample.spacing, voi.shape) >= cfg.predict.threshold
    if not mask.any():
        return None
    return Sample(id=sample.id, image=voi[None], mask=mask.astype(np.uint8), diagnosis=None,
                  patient_id=sample.patient_id, meta={**sample.meta, "source": sample.source}, spacing=sample.spacing)


class UnlabelledSource:
    """``data.unlabelled``'s dataset and the segmenter for its masks, opened and checked (no voxel read yet)."""

    def __init__(self, root: str | Path, format: str | None, options: dict, masks: str | Path | None,
                 device: str = "cpu"):
        self.root = Path(root)
        if not self.root.exists():
            raise InputError(self.root, "data.unlabelled: not found")
        self.dataset = open_dataset(self.root, format=format, **options)
        self.samples = [s for s in self.dataset.samples if s.split != "test"]
        need = not all(s.has_mask for s in self.samples)
        if need and masks is None:
            raise InputError(self.root, f"data.unlabelled: its nodules have no masks; set {KEY} to a finished "
                                        "nodule segmenter run (configs/lidc_voi_nodule_unet.yaml)")
        self.segmenter = open_segmenter(masks, device) if masks is not None else None

    def check_apart(self, main: Dataset) -> None:
        """Refuse nodules that share an id or a patient with the main dataset."""
        ids = {s.id for s in main.samples}
        patients = {s.patient_id for s in main.samples if s.patient_id is not None}
        for s in self.samples:
            if s.id in ids:
                raise InputError(self.root, f"data.unlabelled: nodule id {s.id} is also in {main.root}")
            if s.patient_id in patients:
                raise InputError(self.root, f"data.unlabelled: patient {s.patient_id} is also in {main.root}; "
                                            "the unlabelled dataset's patients must be other patients")

    def nodules(self, console: Console | None = None) -> list[Sample]:
        """The nodules as VOIs with their masks (the segmenter's, where it is given), each CT read once."""
        if self.segmenter is None:
            return list(self.samples)
        out, empty, cached = [], [], (None, None)
        order = sorted(self.samples, key=lambda s: str(s.image))
        for sample in track(order, f"segmenting the nodules of {self.root}", console):
            if cached[0] != str(sample.image):
                cached = (str(sample.image), sample.load_image())
            voi = segmented_voi(self.segmenter, sample, cached[1])
            if voi is None:
                empty.append(sample)
            else:
                out.append(voi)
        if empty and console is not None:
            console.print(f"data.unlabelled: {len(empty)} nodule(s) left out, the segmenter found nothing there: "
                          + ", ".join(s.id for s in empty[:5]) + (" ..." if len(empty) > 5 else ""))
        position = {s.id: i for i, s in enumerate(self.samples)}
        return sorted(out, key=lambda s: position[s.id])

"""MB-DCNN's mask-CN on ISIC-2017 with masks transferred from a PH2 segmenter, against the same network without them.

The shared ISIC-2017 copy has no Part 1 masks, so ``configs/isic2017_mbdcnn.yaml`` reads coarse-SN from
a run trained on PH2 (the transfer setting the config documents). The benchmark trains, through the CLI:

- ``ph2_source``: ``configs/ph2_mbdcnn.yaml`` on all of PH2 (its own train/val split; not scored) (coarse-SN, the source of
  the masks; its mask-CN and enhanced-SN are trained too but not used here);
- ``isic_mbdcnn``: mask-CN on ISIC-2017's training set, RGB + the PH2 coarse-SN mask;
- ``isic_mbdcnn_nomask``: the same network and settings on RGB alone (``maskcn.mask_channel=false``),
  the peer that shows what the transferred mask adds;

and scores both once with ``medsight evaluate RUN ISIC --split val`` (9 crops; melanoma-vs-rest and
SK-vs-rest from one softmax). The config's early stopping watches that same validation set, so the
chosen epoch's numbers are optimistic for both alike (issue 18, section 4); the table therefore also
gives each run's last epoch (single crop, from ``history.csv``), on which nothing was chosen.
Finished runs are reused.

    python -m benchmarks.isic_mbdcnn --ph2 ../shared/datasets/ph2 --isic ../shared/datasets/isic2017 \\
        --out bench_runs/isic_mbdcnn
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.cv_common import ROOT, run_fold, train_run, write_summary
from benchmarks.isic_arl import COLUMNS, last_epoch
from medsight.report import format_table

CONFIG = "configs/isic2017_mbdcnn.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = ROOT.parent / "shared" / "datasets"
    parser.add_argument("--ph2", type=Path, default=shared / "ph2")
    parser.add_argument("--isic", type=Path, default=shared / "isic2017")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_runs" / "isic_mbdcnn")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="a config override for both ISIC runs (e.g. train.epochs=1 for a smoke run)")
    args = parser.parse_args()
    for name, path in (("PH2", args.ph2), ("ISIC-2017", args.isic)):
        if not path.is_dir():
            sys.exit(f"{path}: {name} not found; pass --{name.split('-')[0].lower()}")
    # coarse-SN's run on all of PH2 (its own train/val split); PH2 has no official split to score it on
    source = train_run("configs/ph2_mbdcnn.yaml", args.ph2, args.out / "ph2_source").resolve()
    common = (f"coarse.trained={source}", *args.overrides)
    runs = {"isic_mbdcnn": run_fold(CONFIG, args.isic, args.out, None, 0, name="isic_mbdcnn",
                                    overrides=common, split="val"),
            "isic_mbdcnn_nomask": run_fold(CONFIG, args.isic, args.out, None, 0, name="isic_mbdcnn_nomask",
                                           overrides=(*common, "maskcn.mask_channel=false"), split="val")}
    rows = {}
    for name, label in (("isic_mbdcnn", "mask-CN, RGB + PH2 coarse-SN mask"),
                        ("isic_mbdcnn_nomask", "mask-CN without mask (RGB)")):
        rows[f"{label}, epoch chosen on val, 9 crops"] = {c: runs[name]["metrics"][c] for c in COLUMNS}
        rows[f"{label}, last epoch, 1 crop"] = last_epoch(args.out / name / "official" / "maskcn")
    write_summary(args.out, [("ISIC-2017 validation set (150 images), melanoma / SK vs rest:",
                              format_table(rows, COLUMNS, style="markdown"))],
                  {name: [r] for name, r in runs.items()})


if __name__ == "__main__":
    main()

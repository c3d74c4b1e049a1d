"""ResNet14 vs ARL-CNN14 from scratch on ISIC-2017, several seeds: melanoma and SK AUC on the validation set.

Each (model, seed) pair trains ``configs/isic2017_<model>.yaml`` on the official training set with
``--set seed=<s>`` and is scored by ``medsight evaluate --split val`` (9-crop test-time averaging, one
3-class softmax read as melanoma-vs-rest and SK-vs-rest). The recipe's early stopping also watches
that validation set, so the chosen epoch's AUC is optimistic for every model alike; the table
therefore also gives the last epoch's single-crop validation AUC from ``history.csv``, which nothing
was chosen on. Finished runs are reused, so the work can be split over processes with
``--models`` / ``--seeds`` and summarised by a final call over all of them.

    python -m benchmarks.isic_arl --data ../shared/datasets/isic2017 --out bench_runs/isic_arl

On a 2-core CPU the default is 64 px and the config's 30 epochs (about 17 minutes a run on one
thread); ``--size 128`` is the config's own input size. On a GPU:

    python -m benchmarks.isic_arl --device cuda --size 224 --jobs 6 --out bench_runs/isic_arl_gpu

trains the runs side by side (``--jobs``), each in bf16 with its augmentation on the GPU.
"""

from __future__ import annotations

import argparse
import csv
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.cv_common import ROOT, run_fold, write_summary
from medsight.metrics import summarize_repeats
from medsight.report import format_table

MODELS = ("resnet14", "arlcnn14")
COLUMNS = ["melanoma AUC", "seborrheic_keratosis AUC", "mean AUC"]


def last_epoch(run_dir: Path) -> dict[str, float]:
    """The validation metrics of the run's last epoch (single crop), as ``history.csv`` has them."""
    with open(run_dir / "history.csv", newline="") as f:
        row = list(csv.DictReader(f))[-1]
    return {c: float(row[c]) for c in COLUMNS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "isic2017")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_runs" / "isic_arl")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every run (e.g. model.options.alpha_init=1); needs --tag")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once (each its own process)")
    parser.add_argument("--tag", default="", help="names the runs of a variant: isic2017_<model>-<tag>-...")
    args = parser.parse_args()
    if args.overrides and not args.tag:
        parser.error("--set needs --tag, so that the variant's runs do not mix with the plain ones")
    if not args.data.exists():
        raise SystemExit(f"{args.data}: ISIC-2017 not found; nothing to benchmark")
    extra = (f"data.image_size=[{args.size},{args.size}]", f"train.epochs={args.epochs}", *args.overrides)
    runs = [(seed, model, f"isic2017_{model}-{args.tag + '-' if args.tag else ''}{args.size}px-seed{seed}")
            for seed in args.seeds for model in args.models]

    def train_and_score(run):
        seed, model, name = run
        return run_fold(f"configs/isic2017_{model}.yaml", args.data, args.out, None, 1, name,
                        (*extra, f"seed={seed}"), "val", args.device)

    with ThreadPoolExecutor(args.jobs) as pool:  # each run is its own process; threads only wait on them
        results = list(pool.map(train_and_score, runs))
    chosen, last, timings, per_run = {}, {}, {}, {}
    for (seed, model, name), result in zip(runs, results):
        chosen.setdefault(model, []).append(result["metrics"])
        last.setdefault(model, []).append(last_epoch(args.out / name / "official"))
        timings.setdefault(model, []).append(result)
        per_run[f"{model}{' ' + args.tag if args.tag else ''} seed {seed}"] = result["metrics"]
    label = f"{len(args.seeds)} seeds, {args.size} px, {args.epochs} epochs"
    sections = [
        (f"ISIC-2017 validation set (150 images), early-stopped epoch, 9-crop TTA ({label}, mean ± std):",
         format_table({m: summarize_repeats(r) for m, r in chosen.items()}, COLUMNS, style="markdown")),
        ("Same runs, last epoch, single crop (no choice made on the validation set):",
         format_table({m: summarize_repeats(r) for m, r in last.items()}, COLUMNS, style="markdown")),
        ("Each run, early-stopped epoch, 9-crop TTA:", format_table(per_run, COLUMNS, style="markdown")),
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    write_summary(args.out, sections, timings, args.device.upper())


if __name__ == "__main__":
    main()

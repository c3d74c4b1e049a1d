"""ISIC-2017: how much choosing on the 150 official validation images overstates, and what chooses less.

For one config (default ``configs/isic2017_resnet14.yaml`` at 64 px, as ``benchmarks.isic_arl``),
each seed trains

(a) ``official``: ``data.val_source: official`` (the talk's protocol, and the configs' before
    issue 18): epoch and decision threshold chosen on the official validation set, the optimistic
    reference;
(b) ``split``: ``data.val_source: train``: validation is one fold (1 / ``--folds``) of the training
    set, stratified; the official validation set takes no part in training or choosing;
(c) ``ema`` / ``swa``: (b) keeping an average of the weights (``train.weight_average``: EMA with
    the epoch chosen on the training split; SWA of the last ``train.swa_epochs`` epochs, no
    early stopping);
(d) ``ensemble``: the ``--folds`` runs of (b) with ``data.val_fold`` 0 .. k-1 (fold 0 is (b)'s run),
    scored together by ``medsight evaluate RUN0 ... RUNk-1`` (the mean of their probabilities),
    and each alone (the row of its members' mean says what ensembling adds);

and scores each ONCE on the official validation set (``medsight evaluate ... --split val``,
9-crop test-time averaging). Beside it the table gives the same metrics, computed the same way,
on each run's own selection set (the cases that chose its epoch and threshold; for the ensemble
the mean over its members), so the optimism of a selection set shows as the gap between the two.
Finished runs and scores are reused, so the work can be split over processes (``--variants``,
``--seeds``) and summarised by a final call over all of them.

    python -m benchmarks.isic_protocol --data ../shared/datasets/isic2017 --out bench_runs/isic_protocol

About 17 minutes a run on one CPU thread at 64 px and 30 epochs; the defaults train 8 runs a seed
(official, 5 folds, EMA, SWA). On a GPU: ``--device cuda --size 224 --jobs 4``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.cv_common import ROOT, write_summary
from medsight.rundir import RECORD_FILE, RunDir

VARIANTS = ("official", "split", "ema", "swa", "ensemble")
COLUMNS = ["melanoma AUC", "seborrheic_keratosis AUC", "mean AUC"]
LABELS = {
    "official": "(a) epoch on the official val (the talk's protocol)",
    "split": "(b) epoch on a fold of the training set",
    "ema": "(c) (b) + EMA of the weights",
    "swa": "(c) fold of the training set, SWA of the last epochs",
    "ensemble": "(d) ensemble of the k fold runs of (b)",
}
MEMBERS = "(d)'s members alone, their mean"  # what the ensemble adds over one of its runs


def overrides(variant: str, fold: int, folds: int) -> list[str]:
    """The ``--set`` overrides of one run of ``variant`` (``fold``: its validation fold)."""
    if variant == "official":
        return ["data.val_source=official"]
    split = ["data.val_source=train", f"data.val_fraction={1 / folds}", f"data.val_fold={fold}"]
    return split + {"ema": ["train.weight_average=ema"],
                    "swa": ["train.weight_average=swa", "train.early_stopping=null"]}.get(variant, [])


def runs_of(variant: str, folds: int) -> list[tuple[str, int]]:
    """(run folder, validation fold) of each run ``variant`` needs; (b) is fold 0 of (d)."""
    if variant in ("split", "ensemble"):
        return [(f"fold{k}", k) for k in (range(folds) if variant == "ensemble" else [0])]
    return [(variant, 0)]


def train(config: Path, data: Path, run_dir: Path, sets: list[str], device: str) -> None:
    """``medsight train`` into ``run_dir``, unless a finished run is there (an unfinished one resumes)."""
    if (run_dir / RECORD_FILE).is_file() and RunDir(run_dir).read_record().finished:
        return
    subprocess.run([sys.executable, "-m", "medsight.cli", "train", str(config), "--data", str(data), "--out",
                    str(run_dir), "--device", device, *[a for s in sets for a in ("--set", s)]], check=True)


def score(run_dirs: list[Path], data: Path, result: Path, device: str) -> dict:
    """``medsight evaluate RUN... DATA --split val`` once: the official validation set's metrics."""
    if not result.is_file():
        subprocess.run([sys.executable, "-m", "medsight.cli", "evaluate", *map(str, run_dirs), str(data),
                        "--split", "val", "--out", str(result), "--device", device], check=True)
    return json.loads(result.read_text())["metrics"]


def selection(run_dir: Path, data: Path, device: str) -> dict:
    """The run's metrics on its own selection set (split.json's ``val``), computed as evaluate
    computes them (the kept weights, 9-crop averaging, the run's thresholds); kept in the run."""
    cached = run_dir / "selection.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    from medsight.data import open_dataset
    from medsight.io import jsonable, save_json
    from medsight.recipes import load_recipe

    recipe = load_recipe(run_dir, device)
    dataset = open_dataset(data, format=recipe.cfg.data.format, **recipe.cfg.data.options)
    ids = set(RunDir(run_dir).split_ids("val"))
    chosen = dataclasses.replace(dataset, samples=[s for s in dataset.samples if s.id in ids])
    metrics = recipe.evaluate(chosen, recipe.predict(chosen))["metrics"]
    save_json(jsonable(metrics), cached)
    return metrics


def row(selected: dict, official: dict) -> dict:
    out = {f"selection {c}": selected[c] for c in COLUMNS}
    out.update({f"official val {c}": official[c] for c in COLUMNS})
    out["gap (selection - official), mean AUC"] = selected["mean AUC"] - official["mean AUC"]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "isic2017_resnet14.yaml")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "isic2017")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_runs" / "isic_protocol")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--folds", type=int, default=5, help="folds of the training set (the ensemble's size)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every run; needs --tag")
    parser.add_argument("--tag", default="", help="names the runs of a variant of the config")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once (each its own process)")
    args = parser.parse_args(argv)
    if args.sets and not args.tag:
        parser.error("--set needs --tag, so that the variant's runs do not mix with the plain ones")
    if args.folds < 2:
        parser.error("--folds: at least 2")
    if not args.data.exists():
        raise SystemExit(f"{args.data}: ISIC-2017 not found; nothing to benchmark")
    extra = [f"data.image_size=[{args.size},{args.size}]", f"train.epochs={args.epochs}", *args.sets]
    prefix = {seed: args.out / f"{args.config.stem}-{args.tag + '-' if args.tag else ''}{args.size}px-seed{seed}"
              for seed in args.seeds}
    jobs = {(seed, folder): (variant, fold) for seed in args.seeds for variant in args.variants
            for folder, fold in runs_of(variant, args.folds)}
    with ThreadPoolExecutor(args.jobs) as pool:  # each run is its own process; threads only wait on them
        list(pool.map(lambda job: train(args.config, args.data, prefix[job[0]] / job[1],
                                        [*extra, f"seed={job[0]}", *overrides(*jobs[job], args.folds)],
                                        args.device), jobs))
    rows, per_run, timings = {}, {}, {}
    for variant in args.variants:
        results, members = [], []
        for seed in args.seeds:
            dirs = [prefix[seed] / folder for folder, _ in runs_of(variant, args.folds)]
            name = "ensemble.json" if variant == "ensemble" else f"{dirs[0].name}-official-val.json"
            official = score(dirs, args.data, prefix[seed] / name, args.device)
            chosen = [selection(d, args.data, args.device) for d in dirs]
            selected = {c: sum(m[c] for m in chosen) / len(chosen) for c in COLUMNS}
            results.append(row(selected, official))
            per_run[f"{variant} seed {seed}"] = results[-1]
            if variant == "ensemble":
                alone = [score([d], args.data, prefix[seed] / f"{d.name}-official-val.json", args.device)
                         for d in dirs]
                members.append(row(selected, {c: sum(m[c] for m in alone) / len(alone) for c in COLUMNS}))
                per_run[f"ensemble members seed {seed}"] = members[-1]
            timings.setdefault(LABELS[variant], []).extend(
                {"train_seconds": r.train_seconds, "epochs_run": sum(s.epochs_run for s in r.stages.values())}
                for r in (RunDir(d).read_record() for d in dirs))
        rows[LABELS[variant]] = results
        if variant == "ensemble":
            rows[MEMBERS] = members
    from medsight.metrics import summarize_repeats
    from medsight.report import format_table

    label = f"{args.config.stem}, {len(args.seeds)} seed(s), {args.size} px, {args.epochs} epochs, {args.folds} folds"
    sections = [
        ((f"ISIC-2017 ({label}): each run's selection set and the official validation set (150 images), "
          "scored once; 9-crop TTA, mean ± std over seeds:"),
         format_table({k: summarize_repeats(v) for k, v in rows.items()}, style="markdown")),
        ("Each seed:", format_table(per_run, style="markdown")),
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    write_summary(args.out, sections, timings, args.device.upper())
    (args.out / "summary.json").write_text(json.dumps({"rows": rows, "per_run": per_run}, indent=2) + "\n")


if __name__ == "__main__":
    main()

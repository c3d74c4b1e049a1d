"""The ``medsight`` command line (the contract in docs/design.md).

Exit codes: 0 success, 2 bad input or usage (one message naming the file and the problem),
1 anything unexpected.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import sys
import traceback
from pathlib import Path

import click
from rich.console import Console

from medsight.cli_input import (
    open_input,
    report_rejected,
    restrict_to_split,
    warn_if_unlike_training,
)
from medsight.errors import MedsightError

console = Console(stderr=True, highlight=False, soft_wrap=True)  # never break paths in messages


def _default_run_dir(config: Path) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.stem}-{stamp}"


@contextlib.contextmanager
def _writing(target: Path):
    """Name ``target`` in a write error that names no file (a full disk while a library writes):
    one message and exit code 2, as for every other file the user must deal with."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS):
            raise MedsightError(f"{target}: cannot write ({exc.strerror})") from None
        raise


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="medsight")
@click.option("--max-pixels", type=click.IntRange(min=0), default=None, metavar="N",
              help="Refuse 2D images of more than N pixels (width x height) as rejected cases, a guard against "
                   "decompression bombs; 0: no limit. Default 89478485 (PIL's, about 9459 x 9459).")
def cli(max_pixels):
    """medsight: medical image classification and segmentation when labels are scarce."""
    from medsight.data.imageio import DEFAULT_MAX_PIXELS, set_max_pixels

    set_max_pixels(DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)


@cli.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--data", "data", type=click.Path(path_type=Path), help="Dataset root (overrides data.root).")
@click.option("--out", "out", type=click.Path(path_type=Path), help="Run directory (default runs/<config>-<time>).")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]), show_default=True)
@click.option("--seed", type=int, help="Seed (overrides seed).")
@click.option("--epochs", type=int, help="Training length (overrides train.epochs).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key, e.g. train.lr=0.001.")
def train(config, data, out, device, seed, epochs, overrides):
    """Train the recipe of CONFIG; resumes an unfinished run in --out, refuses a finished one."""
    import tempfile

    from medsight.io import check_writable
    from medsight.recipes import load_config, recipe_for
    from medsight.rundir import RunDir

    cfg = load_config(config, overrides, epochs=epochs, data=data, seed=seed)
    w = _start_processes(device)
    run_dir = out or _default_run_dir(config)
    if not w.is_main:  # rank 0 alone writes the run; the others train into a scratch folder
        with tempfile.TemporaryDirectory(prefix=f"medsight-rank{w.rank}-") as scratch:
            recipe_for(cfg, Console(quiet=True)).train(RunDir(Path(scratch) / "run"), device=device)
        return
    check_writable(run_dir)
    run = RunDir(run_dir)
    new = not run_dir.exists()
    with _writing(run_dir), run.locked():  # one writer at a time; a second command is refused, naming the first
        try:
            recipe_for(cfg, console).train(run, device=device)
        except BaseException:
            if new:  # a first attempt that failed before any progress leaves nothing behind
                run.discard_attempt()
            raise
    console.print(f"run directory: {run_dir}")


def _start_processes(device: str):
    """Join torchrun's processes, when it started this one (see README: More than one GPU or machine)."""
    from medsight.engine.distributed import start

    w = start(device)
    if w.size > 1 and w.is_main:
        console.print(f"world_size: {w.size} (torchrun processes, each with its share of every batch)")
    return w


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, metavar="[RUN_DIR]... INPUT...")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Output folder (must be new or empty).")
@click.option("--format", "fmt", help="Input layout (detected when omitted).")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]), show_default=True)
@click.option("--maps", "maps", type=click.Choice(["gradcam", "gradcam++", "cam"]), is_flag=False, flag_value="gradcam",
              default=None, help="Classifiers: write class activation maps to OUT/maps (default method gradcam).")
def predict(run_dir, inputs, out, fmt, device, maps):
    """Predict every case of INPUT with the run in RUN_DIR; write OUT/predictions.csv (and masks/).
    Several RUN_DIRs predict as one ensemble: the mean of their outputs."""
    from medsight.ensemble import load_runs, split_runs
    from medsight.io import check_writable, refuse_existing_output
    from medsight.recipes.common import predict_shared, write_predictions

    refuse_existing_output(out)
    check_writable(out)
    w = _start_processes(device)
    runs, inputs = split_runs(run_dir, inputs)
    recipe = load_runs(runs, device, console if w.is_main else Console(quiet=True))
    if maps and maps not in recipe.map_methods:
        raise MedsightError(f"--maps: the {recipe.name} recipe has no class activation maps")
    dataset = open_input(inputs, fmt)  # every case: predictions need no label rule
    preds = predict_shared(recipe, dataset)
    if not w.is_main:  # rank 0 writes what all the processes predicted
        return
    warn_if_unlike_training(recipe.record_, preds, console)
    report_rejected(preds.rejected, console)
    if not preds.loaded.ids:
        raise MedsightError(f"{dataset.root}: no case could be predicted")
    with _writing(out):
        write_predictions(out, recipe.rows(preds), lambda folder: recipe.write_files(preds, folder, maps),
                          preds.rejected)
    console.print(f"predicted {len(preds.loaded.ids)} of {len(dataset)} cases -> {out / 'predictions.csv'}")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, metavar="[RUN_DIR]... INPUT...")
@click.option("--format", "fmt", help="Input layout (detected when omitted).")
@click.option("--out", "out", type=click.Path(path_type=Path),
              help="Metrics JSON (default RUN_DIR/evaluation_<input>.json; required for several runs).")
@click.option("--split", "split", help="Evaluate only this split: an official one (train, val, test) or "
                                       "'heldout' (the cross-validation fold the run did not train on).")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]), show_default=True)
def evaluate(run_dir, inputs, fmt, out, split, device):
    """Evaluate the run in RUN_DIR on the labelled cases of INPUT: print the table, write JSON.
    Several RUN_DIRs are evaluated as one ensemble: the mean of their outputs."""
    from medsight.ensemble import cases_used, load_runs, split_runs
    from medsight.io import check_writable, jsonable, save_json
    from medsight.recipes.common import predict_shared
    from medsight.report import format_table

    if out is not None and out.exists():
        raise MedsightError(f"{out}: exists; choose another --out")
    runs, inputs = split_runs(run_dir, inputs)
    if len(runs) > 1 and out is None:
        raise MedsightError(f"an ensemble's metrics belong to none of its {len(runs)} runs: give --out FILE")
    w = _start_processes(device)
    recipe = load_runs(runs, device, console if w.is_main else Console(quiet=True))
    check_writable(out or run_dir)  # before the work, not after it
    dataset = restrict_to_split(open_input(inputs, fmt, recipe), split, runs)
    same_data = str(Path(dataset.root).resolve()) == str(Path(recipe.record_.data.root).resolve())
    preds = predict_shared(recipe, dataset, need_masks=recipe.needs_masks)
    if not w.is_main:  # rank 0 writes what all the processes predicted
        return
    warn_if_unlike_training(recipe.record_, preds, console)
    report_rejected(preds.rejected, console)
    if not preds.loaded.ids:
        raise MedsightError(f"{dataset.root}: no case could be evaluated ({len(preds.rejected)} rejected)")
    result = recipe.evaluate(dataset, preds)
    if "labels" in result:  # which labels were taken for which class
        from medsight.recipes.labels import describe_mapping

        console.print(f"labels onto the run's classes by the rule {describe_mapping(result['labels'])}")
    used = cases_used(runs, preds.loaded.ids, same_data)
    if used["train"] or used["val"]:
        these = "this run" if len(runs) == 1 else "these runs"
        console.print(f"[yellow]note: of the {result['n']} evaluated cases, {used['train']} were used to train "
                      f"{these} and {used['val']} to validate (choose the epoch of) {these}[/yellow]")
    name = Path(inputs[0]).name + (f"-{split}" if split else "")
    label = run_dir.name if len(runs) == 1 else f"ensemble of {len(runs)} ({', '.join(r.name for r in runs)})"
    row = result["metrics"]
    if "std" in result:  # per-image metrics: mean ± std over images
        row = {k: {"mean": v, "std": result["std"][k], "n": result["n"]} for k, v in row.items()}
    rows = {f"{label} on {name} (n={result['n']})": row}
    if "fixed_threshold_metrics" in result:  # the run chose its decision threshold on validation
        chosen = ", ".join(f"{c} {t:.3f}" for c, t in result["threshold"].items())
        rows = {f"{next(iter(rows))}, threshold chosen on validation ({chosen})": row,
                f"the same at threshold {result['fixed_threshold']}": result["fixed_threshold_metrics"]}
    click.echo(format_table(rows))
    target = out or _unique(run_dir / f"evaluation_{name}.json")
    with _writing(target):
        members = {"members": [str(r) for r in runs]} if len(runs) > 1 else {}
        save_json(jsonable({"run": str(run_dir), **members, "input": name, "rejected": [str(r) for r in preds.rejected],
                            **result, "used_in_training": used}), target)
    console.print(f"metrics written to {target}")


def _unique(path: Path) -> Path:
    n = 2
    candidate = path
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
        n += 1
    return candidate


@cli.group()
def data():
    """Inspect and generate datasets."""


@data.command("check")
@click.argument("inputs", nargs=-1, metavar="INPUT...")
@click.option("--format", "fmt", help="Input layout (detected when omitted).")
def data_check(inputs, fmt):
    """Summarise INPUT (cases, classes, sizes, masks) or list every problem found."""
    from medsight.data.check import format_summary, summarize
    from medsight.progress import track

    dataset = open_input(inputs, fmt)
    summary = summarize(dataset, progress=lambda samples: track(samples, "checking cases", console))
    click.echo(format_summary(summary))
    if summary["problems"]:
        problems = summary["problems"]
        raise MedsightError(f"{dataset.root}: {len(problems)} problem(s) found, the first: {problems[0]}")


@data.command("synth")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--n", default=200, show_default=True, help="Number of cases.")
@click.option("--size", default=128, show_default=True, help="Image side in pixels.")
@click.option("--seed", default=0, show_default=True)
def data_synth(out, n, size, seed):
    """Write synthetic dermoscopy-like images with masks and labels in the 'folder' layout."""
    from medsight.data.folder import write_folder
    from medsight.data.synthetic import make_dermoscopy
    from medsight.io import check_writable

    check_writable(out)
    with _writing(out):
        write_folder(make_dermoscopy(n=n, size=size, seed=seed), out)
    console.print(f"wrote {n} synthetic cases to {out}")


@cli.command("features")
@click.argument("kind", metavar="KIND")
@click.argument("inputs", nargs=-1, metavar="INPUT...")
@click.option("--mask", "mask", type=click.Path(path_type=Path), help="Mask of a single image or volume INPUT.")
@click.option("--format", "fmt", help="Input layout (detected when omitted).")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="CSV file to write (must not exist).")
@click.option("--bin-width", type=float, help="GLCM: grey-level bin width in image units (pyradiomics' default 25).")
@click.option("--bin-count", type=int, help="GLCM: a fixed number of grey levels instead of a bin width.")
@click.option("--distance", "distances", type=int, multiple=True, help="GLCM: pixel distance (repeatable; default 1).")
@click.option("--coefficients", "n_coefficients", default=16, show_default=True,
              help="shape (2D): number of Fourier descriptors.")
@click.option("--jobs", "jobs", default=1, show_default=True, type=click.IntRange(min=1),
              help="Cases described in this many processes at once (the same CSV as one).")
def features_cmd(kind, inputs, mask, fmt, out, bin_width, bin_count, distances, n_coefficients, jobs):
    """Compute KIND features (glcm, shape, or both: glcm,shape) of every case of INPUT (one image
    with --mask, or a dataset): one row per case in OUT, the settings beside it in OUT with the
    suffix .json."""
    from medsight.features.extract import Settings, extract, parse_kinds, single_case
    from medsight.io import check_writable, write_csv
    from medsight.progress import track

    kinds = parse_kinds(kind)
    settings_file = out.with_suffix(".json")
    for target in (out, settings_file):
        if target.exists():
            raise MedsightError(f"{target}: exists; choose another --out")
    check_writable(out)
    if bin_width is not None and bin_count is not None:
        raise click.UsageError("give --bin-width or --bin-count, not both")
    if mask is not None:
        if len(inputs) != 1:
            raise click.UsageError("--mask goes with exactly one image or volume INPUT")
        dataset = single_case(Path(inputs[0]), mask)
    else:
        dataset = open_input(inputs, fmt)
    settings = Settings(bin_width=bin_width, bin_count=bin_count, distances=tuple(distances) or (1,),
                        n_coefficients=n_coefficients)
    rows, rejected = extract(kinds, dataset, settings, lambda items, total: track(items, f"{kind} features", console,
                                                                                  total=total), jobs=jobs)
    report_rejected(rejected, console)
    if not rows:
        raise MedsightError(f"{dataset.root}: no case could be described"
                            + (f" ({rejected[0]})" if len(rejected) == 1 else f" ({len(rejected)} rejected)"))
    import medsight
    from medsight.io import save_json

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    try:  # both files, or neither
        with _writing(out):
            write_csv(partial, rows)
            save_json({"medsight_version": medsight.__version__, "kind": ",".join(kinds),
                       "input": [str(i) for i in inputs], "mask": None if mask is None else str(mask),
                       "format": dataset.name, "settings": settings.as_dict(), "cases": len(rows),
                       "rejected": [str(r) for r in rejected], "features": list(rows[0])[1:]}, settings_file)
            partial.rename(out)
    except BaseException:
        partial.unlink(missing_ok=True)
        if not out.exists():
            settings_file.unlink(missing_ok=True)
        raise
    console.print(f"{kind} features of {len(rows)} of {len(dataset)} cases -> {out} (settings: {settings_file})")


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="RUN_DIR...")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="FILE.html or FILE.md")
def report(run_dirs, out):
    """Write an HTML or Markdown report of one or more runs (metrics table and figures)."""
    from medsight.report import write_report

    with _writing(out):
        console.print(f"report written to {write_report(list(run_dirs), out)}")


@cli.command("models")
def models_cmd():
    """List the registered models."""
    from medsight.models import list_models

    click.echo("\n".join(list_models()))


def main(argv=None) -> int:
    code = _main(argv)
    if "medsight.engine.distributed" in sys.modules:  # leave torchrun's process group, if this process joined one
        sys.modules["medsight.engine.distributed"].stop(success=code == 0)
    return code


def _main(argv=None) -> int:
    try:
        cli.main(args=argv, prog_name="medsight", standalone_mode=False)
    except MedsightError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return 2
    except click.Abort:
        console.print("aborted")
        return 1
    except OSError as exc:
        if exc.filename is None:
            traceback.print_exc()
            console.print("[red]unexpected error[/red] (a bug in medsight, or a problem it does not know yet)")
            return 1
        # a file system that refuses (read-only, full, no permission): the user's to fix, one message
        console.print(f"[red]error:[/red] {exc.filename}: {exc.strerror or exc}")
        return 2
    except KeyboardInterrupt:
        console.print("interrupted (an unfinished training run resumes when started again with the same --out)")
        return 130
    except Exception:
        traceback.print_exc()
        console.print("[red]unexpected error[/red] (a bug in medsight, or a problem it does not know yet)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

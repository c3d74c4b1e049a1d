"""Reports: the talk's results table, and reports of runs side by side (HTML with the figures
embedded, or Markdown linking them).

A run whose stages keep their files in subfolders named after them (MB-DCNN's ``coarse/``,
``maskcn/``, ``enhanced/``; MV-KBC's ``kbc/``) gets a table row per stage (the validation metrics
of the stage's kept epoch) and a section per stage: its best epoch, the first, best and last
epochs of its ``history.csv`` and its figures (training curves)."""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medsight.errors import InputError, MedsightError
from medsight.io import atomic_write, check_writable
from medsight.metrics.repeats import as_float
from medsight.rundir import RECORD_FILE, RunDir


# -- the results table ------------------------------------------------------------------------------
def _is_nan(v: Any) -> bool:
    return v is None or (isinstance(v, (float, np.floating)) and math.isnan(v))


def _cell(v: Any, percent: bool, digits: int) -> str:
    scale = 100.0 if percent else 1.0
    if isinstance(v, Mapping):  # a summarize_repeats entry
        mean, std, n = v.get("mean"), v.get("std"), v.get("n")
        if _is_nan(mean):
            return "n/a"
        text = f"{float(mean) * scale:.{digits}f}"
        if n is not None and n > 1 and not _is_nan(std):
            text += f" ± {float(std) * scale:.{digits}f}"
        values = v.get("values")
        if n is not None and values is not None and n < len(values):
            text += f" (n={n})"
        return text
    if _is_nan(v):
        return "n/a"
    return f"{as_float(v, '?') * scale:.{digits}f}"


def format_table(
    rows: Mapping[str, Mapping[str, Any]],
    metrics: Sequence[str] | None = None,
    style: str = "text",
    percent: bool = True,
    digits: int = 2,
    index_name: str = "method",
) -> str:
    """The talk's table: one row per method or run, one column per metric.

    Each row is a metric dict (cells like "88.73") or a ``summarize_repeats`` result (cells like
    "88.73 ± 1.20"; the ± part only when n > 1, and "(n=3)" when only 3 of the runs were defined).
    ``metrics``: the columns, in order (default: every metric, in order of first appearance).
    ``percent`` multiplies by 100 (set False for metrics reported as fractions, e.g. BMA 0.798).
    Undefined values print "n/a", metrics a row lacks print "-". ``style``: "text" or "markdown".
    """
    if style not in ("text", "markdown"):
        raise ValueError(f"style must be 'text' or 'markdown', got {style!r}")
    if metrics is None:
        seen: dict[str, None] = {}
        for row in rows.values():
            seen.update(dict.fromkeys(row))
        metrics = list(seen)
    header = [index_name, *metrics]
    body = [
        [str(name), *(_cell(row[m], percent, digits) if m in row else "-" for m in metrics)]
        for name, row in rows.items()
    ]
    if style == "markdown":

        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

        rule = "|" + "|".join([":---", *["---:"] * len(metrics)]) + "|"
        return "\n".join([line(header), rule, *(line(r) for r in body)])
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def fmt(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:]))]).rstrip()

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *(fmt(r) for r in body)])


# -- run reports ----------------------------------------------------------------------------------
FIGURES = ("training_curves.png", "validation_overlays.png", "validation_roc.png", "heldout_overlays.png")
HISTORY_FILE = "history.csv"


def _is_metric(key: str) -> bool:
    """Validation metrics, not the training logs beside them (losses, epoch, learning rate, time)."""
    return key not in ("epoch", "lr", "seconds") and not key.endswith("loss")


def _load_run(run_dir: Path) -> dict:
    run = RunDir(run_dir)
    if not (run_dir / RECORD_FILE).is_file():
        raise InputError(run_dir, f"not a medsight run directory ({RECORD_FILE} is missing)")
    evaluations = {p.stem: json.loads(p.read_text()) for p in sorted(run_dir.glob("evaluation*.json"))}
    record = run.read_record()
    return {"dir": run_dir, "record": record, "metrics": run.read_metrics(), "evaluations": evaluations,
            "figures": [run_dir / f for f in FIGURES if (run_dir / f).is_file()],
            "stages": [_load_stage(run_dir / name, name, stage) for name, stage in record.stages.items()
                       if (run_dir / name).is_dir()]}


def _load_stage(folder: Path, name: str, stage) -> dict:
    """A stage kept in its own subfolder: its record, its history rows and its figures."""
    history = []
    path = folder / HISTORY_FILE
    if path.is_file():
        try:
            with path.open(newline="") as f:
                history = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
        except (OSError, ValueError, csv.Error) as exc:
            raise InputError(path, f"not a readable training history ({exc})") from None
    return {"name": name, "dir": folder, "record": stage, "history": history,
            "figures": [folder / f for f in FIGURES if (folder / f).is_file()]}


def _rows(runs: list[dict]) -> dict[str, dict]:
    """Table rows of each run: the validation metrics of its final model, those of each stage kept
    in a subfolder (then left out of the run's row, where they carry the stage's name), and each
    evaluation."""
    rows = {}
    for run in runs:
        name, stages = run["dir"].name, [st["name"] for st in run["stages"]]
        val = run["metrics"].get("validation", {})
        rows[f"{name} (validation)"] = {k: v for k, v in val.items()
                                        if _is_metric(k) and not any(k.startswith(f"{st} ") for st in stages)}
        for st in run["stages"]:
            rows[f"{name} / {st['name']} (validation)"] = {k: v for k, v in st["record"].validation.items()
                                                             if _is_metric(k)}
        for stem, ev in run["evaluations"].items():
            rows[f"{name} ({ev.get('input', stem)}{_seen(ev)})"] = ev.get("metrics", {})
    return rows


def _stage_summary(stage: dict) -> str:
    """One sentence on a stage: how far it got and which epoch it kept, by what."""
    st = stage["record"]
    if not st.epochs_run:
        source = st.fitted.get("source") if isinstance(st.fitted, Mapping) else None
        return "no epochs trained in this run" + (f" (read from {source})" if source else "")
    text = f"best epoch {st.best_epoch} of {st.epochs_run}"
    if st.monitor:
        value = st.validation.get(st.monitor)
        text += f" by validation {st.monitor}" + (f" ({as_float(value, '?'):.4f})" if value is not None else "")
    return text + ("" if st.finished else " (unfinished)")


def _history_table(stage: dict, style: str) -> str:
    """The first, best and last epochs of a stage's history: losses and the monitored metric."""
    history, st = stage["history"], stage["record"]
    if not history:
        return ""
    keep = {history[0]["epoch"], history[-1]["epoch"], st.best_epoch}
    columns = [c for c in ("loss", "val_loss", st.monitor) if c and any(c in r for r in history)]
    rows = {f"{int(r['epoch'])}{' (best)' if r['epoch'] == st.best_epoch else ''}": r
            for r in history if r["epoch"] in keep}
    return format_table(rows, list(dict.fromkeys(columns)), style=style, percent=False, digits=4,
                        index_name="epoch")


def write_report(run_dirs: list[Path], out: Path) -> Path:
    """A self-contained HTML (figures embedded) or Markdown (figures linked) report of runs."""
    if out.suffix not in (".html", ".md"):
        raise MedsightError(f"{out}: the report must end in .html or .md")
    if out.exists():
        raise MedsightError(f"{out}: exists; choose another --out")
    check_writable(out)
    runs = [_load_run(Path(d)) for d in run_dirs]
    rows = _rows(runs)
    metrics = list(dict.fromkeys(k for r in rows.values() for k in r))
    if out.suffix == ".md":
        parts = ["# medsight report", "", format_table(rows, metrics, style="markdown"), ""]
        for run in runs:
            parts += [f"## {run['dir']}", "", _describe(run["record"]), ""]
            parts += [f"![{f.name}]({f.resolve()})" for f in run["figures"]] + [""]
            for st in run["stages"]:
                history = st["dir"] / HISTORY_FILE
                parts += [f"### stage {st['name']} (`{st['dir'].name}/`)", "",
                          _stage_summary(st) + (f"; history: {history.resolve()}" if history.is_file() else ""), "",
                          _history_table(st, "markdown"), ""]
                parts += [f"![{st['name']} {f.name}]({f.resolve()})" for f in st["figures"]] + [""]
        atomic_write(out, lambda tmp: Path(tmp).write_text("\n".join(parts)))
        return out
    body = ["<h1>medsight report</h1>", "<pre>" + html.escape(format_table(rows, metrics, style="text")) + "</pre>"]
    for run in runs:
        body.append(f"<h2>{html.escape(str(run['dir']))}</h2><p>{html.escape(_describe(run['record']))}</p>")
        body += [_embedded(fig, fig.name) for fig in run["figures"]]
        for st in run["stages"]:
            body.append(f"<h3>stage {html.escape(st['name'])} ({html.escape(st['dir'].name)}/)</h3>"
                        f"<p>{html.escape(_stage_summary(st))}</p>")
            table = _history_table(st, "text")
            if table:
                body.append("<pre>" + html.escape(table) + "</pre>")
            body += [_embedded(fig, f"{st['name']}: {fig.name}") for fig in st["figures"]]
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>medsight report</title>"
            "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}pre{background:#f4f4f4;"
            "padding:8px}</style></head><body>" + "\n".join(body) + "</body></html>\n")
    atomic_write(out, lambda tmp: Path(tmp).write_text(page))
    return out


def _embedded(figure: Path, caption: str) -> str:
    data = base64.b64encode(figure.read_bytes()).decode()
    return (f'<figure><img src="data:image/png;base64,{data}" style="max-width:100%">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _seen(evaluation: Mapping) -> str:
    """", 9 of 12 cases used in training" where an evaluation saw cases the run trained or validated on."""
    used = evaluation.get("used_in_training") or {}
    seen = int(used.get("train", 0)) + int(used.get("val", 0))
    return f", {seen} of {evaluation.get('n', '?')} cases used in training" if seen else ""


def _describe(record) -> str:
    """One sentence on a run: recipe, data, task, each network stage's epochs, time."""
    data, task = record.data, record.task
    stages = "; ".join(f"{name}: best epoch {st.best_epoch} of {st.epochs_run}"
                       for name, st in record.stages.items() if st.best_epoch)
    return (f"{record.recipe} recipe on {data.format} ({data.root}): {data.train} training / {data.val} validation "
            f"cases; task {task.name if task else None} ({', '.join(task.classes) if task else ''}); "
            + (f"{stages}; " if stages else "") + f"{record.train_seconds} s on {record.device}"
            + (f" x {record.world_size} processes" if record.world_size > 1 else ""))

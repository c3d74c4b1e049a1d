"""``make demo``: train a segmenter and a classifier, predict held-out cases, evaluate, report.

On the embedded synthetic dermoscopy data by default; ``--data`` points it at a real PH2 or
ISIC-2017 folder instead (PH2: fold 0 of a 5-fold split is held out; ISIC-2017: the official
validation set is). Everything goes through the same commands a user types.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

from medsight.cli import main as cli

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def run(*args: str) -> None:
    print("$ medsight " + " ".join(args), flush=True)
    code = cli(list(args))
    if code != 0:
        sys.exit(code)


def plan(data: Path | None, out: Path) -> tuple[list[tuple[str, str, list[str]]], Path, list[str], str]:
    """(name, config, extra train args) per model, the evaluation input, its extra args, and a
    sentence saying which cases are held out."""
    if data is None:
        from medsight.data.folder import write_folder
        from medsight.data.synthetic import make_dermoscopy

        heldout = out / "heldout_cases"
        write_folder(make_dermoscopy(n=60, size=128, seed=12345), heldout)
        return ([("segmentation", "demo_unet.yaml", []), ("classification", "demo_resnet.yaml", [])],
                heldout, [], f"{heldout} (60 synthetic cases of another seed)")
    from medsight.data import detect_format

    fmt = detect_format(data)
    base = ["--data", str(data)]
    if fmt == "ph2":
        folds = ["--set", "data.folds=5", "--set", "data.fold=0"]
        return ([("segmentation", "ph2_unet.yaml", base + folds + ["--epochs", "40"]),
                 ("classification", "ph2_resnet.yaml", base + folds + ["--epochs", "40"])],
                data, ["--split", "heldout"], f"fold 0 of a patient-level 5-fold split of {data}")
    if fmt == "isic2017":
        return ([("classification", "ph2_resnet.yaml",
                  base + ["--epochs", "8", "--set", "data.format=isic2017", "--set", "data.task=melanoma"])],
                data, ["--split", "val"], f"the official validation set of {data}")
    sys.exit(f"{data}: the demo runs on PH2 or ISIC-2017 folders (found the {fmt} layout)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="medsight demo")
    parser.add_argument("--out", type=Path, default=Path("demo_runs"))
    parser.add_argument("--data", type=Path, help="a PH2 or ISIC-2017 folder (default: synthetic data)")
    args = parser.parse_args(argv)
    out = args.out / datetime.datetime.now().strftime("demo-%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    start = time.perf_counter()
    models, heldout, eval_args, heldout_text = plan(args.data, out)
    made = []
    for name, config, extra in models:
        run_dir, pred_dir = out / name, out / f"{name}_predictions"
        run("train", str(CONFIGS / config), "--out", str(run_dir), *extra)
        run("predict", str(run_dir), str(heldout), "--out", str(pred_dir))
        run("evaluate", str(run_dir), str(heldout), *eval_args, "--out", str(run_dir / "evaluation_heldout.json"))
        if (pred_dir / "masks").is_dir():
            heldout_overlays(heldout, pred_dir, run_dir)
        made.append((name, run_dir, pred_dir))
    run("report", *[str(d) for _, d, _ in made], "--out", str(out / "report.html"))
    write_summary(out, made, heldout_text, time.perf_counter() - start)


def heldout_overlays(heldout: Path, pred_dir: Path, run_dir: Path, count: int = 8) -> None:
    """Predicted (yellow) against reference (green) outlines on the first held-out cases."""
    from medsight.data import open_dataset
    from medsight.data.imageio import read_mask
    from medsight.figures import save_overlays

    fold = set(json.loads((run_dir / "split.json").read_text())["heldout"])  # empty: the whole input is held out
    cases = [s for s in open_dataset(heldout).samples if s.has_mask and (not fold or s.id in fold)][:count]
    save_overlays([s.load_image() for s in cases], [read_mask(pred_dir / "masks" / f"{s.id}.png") for s in cases],
                  [s.load_mask() for s in cases], [s.id for s in cases], run_dir / "heldout_overlays.png")


def write_summary(out: Path, made, heldout_text: str, seconds: float) -> None:
    lines = [f"# medsight demo ({seconds / 60:.1f} min)", "", f"Held-out cases: {heldout_text}", ""]
    for name, run_dir, pred_dir in made:
        result = json.loads((run_dir / "evaluation_heldout.json").read_text())
        shown = ", ".join(f"{k} {v * 100:.1f}" for k, v in result["metrics"].items()
                          if k in ("JA", "DI", "AC", "ACC", "AUC", "SEN", "SPE") and v is not None)
        lines += [f"## {name}", f"- run directory (config, weights, history, figures): `{run_dir}`",
                  f"- predictions: `{pred_dir / 'predictions.csv'}`"
                  + (f", masks in `{pred_dir / 'masks'}`" if (pred_dir / "masks").is_dir() else ""),
                  f"- held-out metrics (n={result['n']}): {shown}", ""]
    lines += [f"Report with tables and figures: `{out / 'report.html'}`", ""]
    (out / "SUMMARY.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

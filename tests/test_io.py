"""JSON output: numbers of any kind, nan as null, a round trip back into the summariser and the table;
atomic output folders."""

import json
import os
import stat

import numpy as np
import pytest

from medsight.errors import MedsightError
from medsight.io import jsonable, to_json, write_new_folder
from medsight.metrics import summarize_repeats
from medsight.report import format_table

nan = float("nan")


def test_jsonable_and_to_json(tmp_path):
    obj = {
        "AUC": np.float32(0.5),
        "SEN": nan,
        "n": np.int64(3),
        "ok": np.bool_(True),
        "values": np.array([0.1, np.nan]),
        "nested": ({"x": float("inf")},),
        1: None,
    }
    got = jsonable(obj)
    assert got == {"AUC": 0.5, "SEN": None, "n": 3, "ok": True, "values": [0.1, None], "nested": [{"x": None}], "1": None}
    assert type(got["n"]) is int and type(got["AUC"]) is float
    summary = summarize_repeats([{"SE": nan, "JA": 0.8}, {"SE": 0.5, "JA": 0.9}])
    path = tmp_path / "metrics.json"
    text = to_json(summary, path)
    back = json.loads(path.read_text())
    assert json.loads(text) == back
    assert back["SE"]["values"] == [None, 0.5] and back["SE"]["n"] == 1
    # a JSON round trip reads back into the summariser and the table
    assert summarize_repeats([{"SE": None}, {"SE": 0.5}])["SE"]["n"] == 1
    assert "n/a" in format_table({"r": {"SE": None}})
    with pytest.raises(TypeError):
        jsonable({"x": object()})


def test_an_output_folder_appears_whole_or_not_at_all(tmp_path):
    def fill(folder):
        (folder / "a.txt").write_text("a")

    assert write_new_folder(tmp_path / "out", fill) == tmp_path / "out"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (tmp_path / "out" / "a.txt").is_file()

    def broken(folder):
        (folder / "half.txt").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_new_folder(tmp_path / "other", broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing half-written is left
    with pytest.raises(MedsightError, match="exists and is not an empty folder"):
        write_new_folder(tmp_path / "out", fill)


# -- output files follow the umask, as files created with open() do (issue 17, item 7) -----------


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def test_every_written_file_follows_the_umask(tmp_path, umask):
    import torch

    from medsight.data.imageio import write_png
    from medsight.engine.checkpoint import save_state, save_weights
    from medsight.explain import MapWriter
    from medsight.io import save_json, write_csv

    save_weights({"w": torch.zeros(2)}, tmp_path / "model.safetensors")
    save_state({"epoch": 1}, tmp_path / "checkpoint.pt")
    save_json({"a": 1}, tmp_path / "run.json")
    write_png(tmp_path / "masks" / "a.png", np.zeros((4, 5), np.uint8))
    MapWriter(tmp_path).write("a", np.zeros((3, 4, 5), np.uint8), np.ones((2, 2)))
    write_csv(tmp_path / "predictions.csv", [{"id": "a"}])  # open(): the reference
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert [p.relative_to(tmp_path).as_posix() for p in files] == [
        "checkpoint.pt", "maps/a.png", "masks/a.png", "model.safetensors", "overlays/a.png", "predictions.csv",
        "run.json"]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def test_a_written_dataset_follows_the_umask(tmp_path, umask):
    from medsight.data.folder import write_folder
    from medsight.data.synthetic import make_dermoscopy

    root = write_folder(make_dermoscopy(n=2, size=16, seed=0), tmp_path / "data")
    for path in [root, *root.rglob("*")]:
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert stat.S_IMODE(path.stat().st_mode) == expected, path

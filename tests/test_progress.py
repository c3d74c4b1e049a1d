"""Progress of long loops (issue 17, item 6): a plain line every EVERY items (or SECONDS seconds)
when not on a terminal, a rich bar on one, nothing for a short quick loop; and the commands that
go over many cases (predict, evaluate, data check, features) show it."""

import io

import pytest
from rich.console import Console

from medsight import progress
from medsight.cli import main
from medsight.progress import track

from builders import CONFIGS


def plain_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, width=200), out


def test_a_line_every_n_items_and_at_the_end(monkeypatch):
    monkeypatch.setattr(progress, "EVERY", 100)
    console, out = plain_console()
    assert list(track(range(250), "loading cases", console)) == list(range(250))
    lines = out.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == ["loading cases: 100/250", "loading cases: 200/250",
                                                      "loading cases: 250/250 done"]


def test_a_short_quick_loop_says_nothing_and_a_slow_one_says_when(monkeypatch):
    console, out = plain_console()
    assert list(track([1, 2, 3], "loading", console)) == [1, 2, 3]
    assert out.getvalue() == ""
    monkeypatch.setattr(progress, "SECONDS", 0.0)  # every item is "a long time" after the last line
    list(track(iter([1, 2, 3]), "describing", console, total=3))
    assert [line.split(" (")[0] for line in out.getvalue().splitlines()] == [
        "describing: 1/3", "describing: 2/3", "describing: 3/3 done"]


def test_a_terminal_gets_the_bar_not_lines(monkeypatch):
    monkeypatch.setattr(progress, "EVERY", 10)
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    assert list(track(range(50), "loading cases", console)) == list(range(50))
    assert "loading cases: 10/50" not in out.getvalue()


@pytest.mark.slow
def test_the_commands_over_many_cases_show_progress(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(progress, "EVERY", 5)
    data = tmp_path / "data"
    assert main(["data", "synth", str(data), "--n", "12", "--size", "40"]) == 0
    run = tmp_path / "run"
    assert main(["train", str(CONFIGS / "demo_resnet.yaml"), "--out", str(run), "--epochs", "1", "--device", "cpu",
                 "--set", "data.options.n=16", "--set", "data.options.size=32", "--set", "data.image_size=[32,32]",
                 "--set", "model.options.width=8"]) == 0
    capsys.readouterr()
    commands = {"predict": (["predict", run, data, "--out", tmp_path / "pred", "--device", "cpu"], "loading cases"),
                "evaluate": (["evaluate", run, data, "--device", "cpu"], "loading cases"),
                "data check": (["data", "check", data], "checking cases"),
                "features": (["features", "shape", data, "--out", tmp_path / "shape.csv"], "shape features")}
    for name, (args, description) in commands.items():
        assert main([str(a) for a in args]) == 0, name
        err = " ".join(capsys.readouterr().err.split())
        assert f"{description}: 5/12" in err and f"{description}: 10/12" in err, (name, err)
        assert f"{description}: 12/12 done" in err, (name, err)

"""``make bench``: the runner it calls exists and knows every benchmark script in the tree."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from benchmarks import run_all

REPO = Path(__file__).resolve().parents[2]


def test_make_bench_calls_this_runner() -> None:
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^bench:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe is not None
    module = re.search(r"-m (\S+)", recipe.group(1))
    assert module is not None and module.group(1) == "benchmarks.run_all"


def test_every_benchmark_script_in_the_tree_is_run() -> None:
    scripts = {p.parent.name for p in (REPO / "benchmarks").glob("*/run.py")}
    assert set(run_all.available()) == scripts
    # the default run (make bench) leaves out only the ones that train models
    assert set(run_all.available(include_on_demand=False)) == scripts - set(run_all.ON_DEMAND)
    assert run_all.command("serving") == [sys.executable, "-m", "benchmarks.serving.run"]


def test_unknown_names_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run_all.main(["nope"])
    assert exc.value.code == 2
    assert "unknown benchmarks ['nope']" in capsys.readouterr().err

"""scripts/retrain_default.sh: every command it runs is one the CLI accepts (parsed by the CLI's
own parser, nothing executed), it writes into a fresh directory and never into the bundled
weights without --install, and its summary says which bars a model meets."""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer.main

from mobile_multimodal.cli import app
from mobile_multimodal.training.retrain_summary import MAX_INT2_LOSS, TARGETS, main, summarize

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "retrain_default.sh"


def _dry_run(*args: str) -> list[list[str]]:
    done = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", *args], capture_output=True, text=True, timeout=60, check=True
    )
    return [
        shlex.split(line[2:].split(" > ")[0]) for line in done.stderr.splitlines() if line.startswith("+ ")
    ]


def _parse_cli(args: list[str]) -> Any:
    """Parse ``mobile-mm ARGS`` down to the leaf command, as the CLI would, without running it."""
    command = typer.main.get_command(app)
    ctx = command.make_context("mobile-mm", list(args))
    while hasattr(ctx.command, "resolve_command"):  # a group (typer vendors its own click)
        rest = [*ctx._protected_args, *ctx.args]
        if not rest:
            break
        name, sub, remaining = ctx.command.resolve_command(ctx, rest)
        assert sub is not None and name is not None
        ctx = sub.make_context(name, remaining, parent=ctx)
    return ctx


def test_every_command_of_the_chain_is_accepted_by_the_cli(tmp_path: Path) -> None:
    commands = _dry_run("--out", str(tmp_path / "run"))
    kinds = []
    for cmd in commands:
        if cmd[0].endswith("mobile-mm"):
            ctx = _parse_cli(cmd[1:])
            kinds.append(ctx.info_name)
            if ctx.info_name == "train":
                assert (
                    ctx.params["preset"] == "user-style" and ctx.params["out"] == tmp_path / "run" / "model"
                )
            if ctx.info_name == "quantize":
                assert Path(ctx.params["out"]).parent == tmp_path / "run" / "model"
        else:  # python -m MODULE ...
            assert cmd[1] == "-m" and importlib.util.find_spec(cmd[2]) is not None, cmd
            kinds.append(cmd[2].rsplit(".", 1)[1])
    assert kinds == [
        "train",
        *["quantize"] * 3,
        *["domain_calibration"] * 4,
        *["eval"] * 4,
        "check",
        "export",
        "retrain_summary",
    ]
    # the bundled variants' methods: int8 rtn, int4 qat, int2 gptq
    methods = [(c[c.index("--bits") + 1], c[c.index("--method") + 1]) for c in commands if "quantize" in c]
    assert methods == [("8", "rtn"), ("4", "qat"), ("2", "gptq")]
    # and the bundled INT2's options (its manifest records them)
    int2 = next(c for c in commands if "quantize" in c and c[c.index("--bits") + 1] == "2")
    shipped = json.loads((ROOT / "src/mobile_multimodal/weights/default/int2/manifest.json").read_text())
    options = shipped["quantization"]
    assert int2[int2.index("--zero-points") + 1] == options["zero_points"] == "decoder-quarter"
    assert int2[int2.index("--gptq-min-rows") + 1] == str(options["calibration"]["min_rows_per_input"])
    assert not any("weights/default" in " ".join(c) for c in commands)  # no --install, no copy


def test_the_continuation_recipe_passes_its_init_model_to_train(tmp_path: Path) -> None:
    base = ROOT / "src" / "mobile_multimodal" / "weights" / "default"
    commands = _dry_run(
        "--out", str(tmp_path / "run"), "--preset", "user-style-continue", "--init-from", str(base)
    )
    ctx = _parse_cli(commands[0][1:])
    assert ctx.info_name == "train"
    assert (ctx.params["preset"], ctx.params["init_from"]) == ("user-style-continue", base)
    assert not any("--init-from" in c for c in commands[1:])  # the rest works on the new model


def test_install_is_the_only_way_into_the_bundled_weights(tmp_path: Path) -> None:
    commands = _dry_run("--out", str(tmp_path / "run"), "--install")
    copies = [c for c in commands if c[0] in ("cp", "rm", "mkdir")]
    assert (
        copies
        and copies[0][:2] == ["cp", "-a"]
        and copies[0][-1] == str(tmp_path / "run" / "previous-default")
    )


def test_the_script_refuses_a_directory_that_holds_a_model(tmp_path: Path) -> None:
    (tmp_path / "run" / "model").mkdir(parents=True)
    (tmp_path / "run" / "model" / "manifest.json").write_text("{}")
    done = subprocess.run(
        ["bash", str(SCRIPT), "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "fresh --out" in done.stderr


def _report(scale: float) -> dict[str, Any]:
    tasks: dict[str, dict[str, float]] = {}
    for task, metric, minimum in TARGETS:
        value = min(1.0, minimum * 1.02) if metric != "cider_d" else 5.0
        tasks.setdefault(task, {})[metric] = value * scale
        tasks[task]["primary"] = tasks[task].get("primary", value * scale)
    return {"tasks": tasks}


def test_summary_passes_only_when_every_bar_and_the_int2_loss_are_met(tmp_path: Path) -> None:
    lines, ok = summarize({"fp32": _report(1.0), "int2": _report(1.0)})
    assert ok and len(lines) == 2 + 2 * len(TARGETS) + 1
    _, ok = summarize({"fp32": _report(1.0), "int2": _report(1 - 2 * MAX_INT2_LOSS)})
    assert not ok  # loses more than 2%
    bad = _report(1.0)
    bad["tasks"]["user_ocr_mixed"]["word_accuracy"] = 0.5
    lines, ok = summarize({"fp32": bad, "int2": _report(1.0)})
    assert not ok and any("user_ocr_mixed" in line and line.endswith("NO |") for line in lines)
    for precision, report in (("fp32", _report(1.0)), ("int2", _report(1.0))):
        (tmp_path / f"eval_{precision}.json").write_text(json.dumps(report))
    assert main([str(tmp_path)]) == 0
    (tmp_path / "eval_int2.json").unlink()
    assert main([str(tmp_path)]) == 2


@pytest.mark.parametrize("report_dir", [ROOT / "docs" / "user_style"])
def test_summary_of_the_bundled_models_reports_says_issue_18_is_not_met(report_dir: Path) -> None:
    reports = {p: json.loads((report_dir / f"eval_{p}.json").read_text()) for p in ("fp32", "int2")}
    lines, ok = summarize(reports)
    assert not ok
    assert any(line.startswith("| fp32 | user_ocr_mixed |") and line.endswith("NO |") for line in lines)

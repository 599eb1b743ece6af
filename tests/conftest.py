"""Shared fixtures: tiny models that build in milliseconds, and the bundled model when present."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests import leftover_processes

from mobile_multimodal.model import MobileMultiModalLLM, ModelConfig, bundled_model_dir

torch.set_num_threads(1)
# A real PostgreSQL for the store, security and ops suites, one cluster per session.
pytest_plugins = ["tests.postgres"]
# Seconds the session's processes get to finish exiting after the last teardown.
LEFTOVER_WAIT_S = 30


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--leftover-wait",
        type=float,
        default=LEFTOVER_WAIT_S,
        help="Seconds the session's processes get to exit after the last teardown before they fail it.",
    )


def pytest_configure(config: pytest.Config) -> None:
    leftover_processes.start_session()


@pytest.hookimpl(trylast=True)  # after every other plugin's; session fixtures are torn down by now
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when a process the tests started is still running (issue 16: orphaned workers)."""
    survivors = leftover_processes.leftover_processes(wait_s=session.config.getoption("leftover_wait"))
    if not survivors:
        return
    leftover_processes.kill_leftovers()
    writer = session.config.get_terminal_writer()
    writer.line()
    writer.line(
        f"ERROR: {len(survivors)} process(es) started by the tests outlived the session (killed now):",
        red=True,
        bold=True,
    )
    for line in survivors:
        writer.line(f"  {line}", red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def tiny_model() -> MobileMultiModalLLM:
    return MobileMultiModalLLM.from_config(ModelConfig.tiny(), seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model: MobileMultiModalLLM) -> Path:
    return tiny_model.save(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def bundled_model() -> MobileMultiModalLLM:
    if not (bundled_model_dir() / "manifest.json").exists():
        pytest.fail("the bundled model is missing from src/mobile_multimodal/weights/default")
    return MobileMultiModalLLM.from_pretrained("default")

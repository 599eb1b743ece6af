"""The items of docs/deploy.md its tests check: shell commands, PromQL blocks (the capacity section is
benchmarks/serving/capacity.py's).

Example::

    for command in bash_commands():
        print(command)
"""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"


def text() -> str:
    return DOC.read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text(), flags=re.S)


def bash_commands() -> list[str]:
    return [line.strip() for block in _blocks("bash") for line in block.splitlines() if line.strip()]


def promql_queries() -> list[str]:
    return [block.strip() for block in _blocks("promql")]

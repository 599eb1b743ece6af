"""docs/architecture.md's layer table says what tests/test_layers.py's RANK enforces."""

from __future__ import annotations

import re
from pathlib import Path

from tests.test_layers import RANK

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
ROW = re.compile(r"^\| (\d+) \| ([^|]+) \| ([^|]+) \|")


def _table() -> dict[int, tuple[set[str], str]]:
    rows = {}
    for line in DOC.read_text().splitlines():
        m = ROW.match(line)
        if m:
            rows[int(m.group(1))] = (set(re.findall(r"`([a-z_]+)`", m.group(2))), m.group(3).strip())
    return rows


def test_the_layer_table_lists_every_package_at_its_rank() -> None:
    table = _table()
    assert table, "no layer table in docs/architecture.md"
    documented = {pkg: rank for rank, (pkgs, _) in table.items() for pkg in pkgs}
    assert documented == RANK


def test_each_layer_may_import_exactly_the_layers_below() -> None:
    for rank, (_, may_import) in _table().items():
        expected = "nothing of ours" if rank == 0 else f"layers 0–{rank - 1}"
        assert may_import == expected, (rank, may_import)

"""Imports point down (DESIGN.md "Layers"): a package may import only packages below it.

The order is ``RANK`` below, from the ground up (0: shared basics) to the CLI: the one place it
is written. docs/architecture.md explains each layer, and tests/test_architecture_doc.py keeps
its table equal to ``RANK``. Lazy imports count; imports under ``TYPE_CHECKING`` do not (they
never run).

The upward imports the code still has are listed in ``KNOWN_UPWARD`` (issue 17 removes them); a
new one fails this test, and so does a listed one that is gone (take it off the list).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "mobile_multimodal"

RANK = {
    "errors": 0,
    "settings": 0,
    "filehash": 0,
    "manifest_signing": 0,
    "data": 0,
    "observability": 1,
    "model": 2,
    "quantization": 3,
    "training": 4,
    "export": 5,
    "store": 6,
    "security": 7,
    "serving": 8,
    "ops": 9,
    "cli": 10,
}
# Entry points sit above everything.
TOP = {"__init__", "__main__", "weights"}

KNOWN_UPWARD: set[tuple[str, str]] = set()


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(n.lineno for n in ast.walk(child) if hasattr(n, "lineno"))
    return lines


def package_edges() -> set[tuple[str, str]]:
    edges: set[tuple[str, str]] = set()
    for path in ROOT.rglob("*.py"):
        unit = path.relative_to(ROOT).parts[0].removesuffix(".py")
        tree = ast.parse(path.read_text())
        skip = _type_checking_lines(tree)
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                parts = name.split(".")
                if parts[0] == "mobile_multimodal" and len(parts) > 1 and parts[1] != unit:
                    edges.add((unit, parts[1]))
    return edges


def test_every_package_has_a_layer() -> None:
    units = {p.relative_to(ROOT).parts[0].removesuffix(".py") for p in ROOT.rglob("*.py")}
    assert units - TOP <= set(RANK), f"give these packages a layer in RANK: {sorted(units - TOP - set(RANK))}"


def test_imports_point_down() -> None:
    upward = {(a, b) for a, b in package_edges() if a not in TOP and RANK[a] < RANK[b]}
    new = upward - KNOWN_UPWARD
    assert not new, f"imports that point up (DESIGN.md 'Layers'): {sorted(new)}"
    gone = KNOWN_UPWARD - upward
    assert not gone, f"fixed, take them off KNOWN_UPWARD: {sorted(gone)}"


def test_no_package_cycles() -> None:
    # imports that point down cannot form a cycle; packages of one layer could, so look
    edges = package_edges()
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        if a not in TOP and b not in TOP:
            graph.setdefault(a, set()).add(b)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cyclic = sorted(p for p in graph if reaches(p, p, {p}))
    assert not cyclic, f"packages in an import cycle: {cyclic}"

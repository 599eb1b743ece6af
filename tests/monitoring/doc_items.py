"""Every operator-facing item of README.md, docs/monitoring.md and docs/runbooks/*.md, extracted.

Items: shell commands (```bash blocks, ``\\``-continued lines joined, and inline code spans that
start with a command), PromQL (```promql blocks, ``promtool query instant URL 'Q'``), metric
selectors (```prometheus blocks), LogQL (```logql blocks, inline ``{service=...}``), grep
patterns (with what they search), metric names, ``label="value"`` pairs and environment
variables. The tests (tests/monitoring/test_runbooks_docs.py offline,
tests/integration/test_runbooks_live.py against the live stack) check each one; an item no
check knows fails, unless a table there names it with the reason it cannot be checked here.

Example::

    for item in shell_commands():
        print(item.doc, item.text)
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = (
    REPO / "README.md",
    REPO / "docs" / "monitoring.md",
    *sorted((REPO / "docs" / "runbooks").glob("*.md")),
)

# First words that make an inline code span a shell command.
COMMAND_HEADS = frozenset(
    {
        "docker-compose", "docker", "curl", "promtool", "amtool", "mobile-mm", ".venv/bin/mobile-mm",
        "make", "python", "python3", ".venv/bin/python", "pip", "grep", "chmod", "export",
        "nvidia-smi", "kill", "git", "wrk",
    }
)  # fmt: skip
_METRIC_SUFFIX = r"(?:total|seconds|bytes|percent|ratio|score|info|ok|depth|loss|bucket|count|sum)"
METRIC_NAME = re.compile(rf"\b([a-z][a-z0-9]*(?:_[a-z0-9]+)*_{_METRIC_SUFFIX})\b")
ENV_VAR = re.compile(r"\b((?:MOBILE_MM|OTEL|PROMETHEUS|ENABLE|CPU|MEMORY|GPU)_[A-Z0-9_]*[A-Z0-9])\b")
LABEL_PAIR = re.compile(r'\b([a-z_]+)\s*(=~|!=|!~|=)\s*"([^"]*)"')


@dataclass(frozen=True, order=True)
class DocItem:
    doc: str  # path relative to the repository
    text: str


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def _prose(text: str) -> str:
    return re.sub(r"```.*?```", "", text, flags=re.S)


def _spans(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", _prose(text))


def shell_commands() -> list[DocItem]:
    items: list[DocItem] = []
    for path in DOCS:
        text = path.read_text()
        for block in _blocks(text, "bash"):
            joined = re.sub(r"\\\n\s*", "", block)
            for line in joined.splitlines():
                line = re.sub(r"\s+#.*$", "", line).strip()
                if line and not line.startswith("#"):
                    items.append(DocItem(_rel(path), line))
        for span in _spans(text):
            words = span.split()
            if words and (words[0] in COMMAND_HEADS or re.match(r"[A-Z_]+=\S* ", span)):
                items.append(DocItem(_rel(path), span))
    return items


def promtool_query(command: str) -> str | None:
    """The query of a ``promtool query instant URL 'Q'`` command, else None."""
    if not command.startswith("promtool query instant"):
        return None
    return shlex.split(command)[4]


def promql_queries() -> list[DocItem]:
    items = [
        DocItem(_rel(path), block.strip()) for path in DOCS for block in _blocks(path.read_text(), "promql")
    ]
    for item in shell_commands():
        query = promtool_query(item.text)
        if query is not None:
            items.append(DocItem(item.doc, query))
    return items


def metric_selectors() -> list[DocItem]:
    """The lines of ```prometheus blocks: one series (name and example labels) each."""
    return [
        DocItem(_rel(path), line.strip())
        for path in DOCS
        for block in _blocks(path.read_text(), "prometheus")
        for line in block.splitlines()
        if line.strip() and not line.startswith("#")
    ]


def logql_queries() -> list[DocItem]:
    items: list[DocItem] = []
    for path in DOCS:
        text = path.read_text()
        for block in _blocks(text, "logql"):
            items += [DocItem(_rel(path), ln) for ln in block.splitlines() if ln.startswith("{")]
        items += [DocItem(_rel(path), s) for s in _spans(text) if s.startswith("{service=")]
    return items


@dataclass(frozen=True)
class GrepUse:
    doc: str
    command: str
    source: str  # what the grep searches: app_log, app_stdout, metrics, alertmanager_log
    args: tuple[str, ...]  # grep's own arguments (flags and pattern), file operand removed


def pipeline(command: str) -> list[list[str]]:
    """The words of each stage of ``a | b | c`` (a quoted ``|`` stays in its word)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars="|")
    lexer.whitespace_split = True
    stages: list[list[str]] = [[]]
    for token in lexer:
        if token == "|":
            stages.append([])
        else:
            stages[-1].append(token)
    return stages


def grep_uses() -> list[GrepUse]:
    uses: list[GrepUse] = []
    for item in shell_commands():
        if "grep" not in item.text.split():
            continue
        for words in pipeline(item.text):
            if "grep" not in words:
                continue
            args = words[words.index("grep") + 1 :]
            if args and args[-1].startswith("/app/logs/"):
                uses.append(GrepUse(item.doc, item.text, "app_log", tuple(args[:-1])))
            elif re.search(r"curl .*/metrics", item.text):
                uses.append(GrepUse(item.doc, item.text, "metrics", tuple(args)))
            elif re.match(r"docker-compose logs (-f )?alertmanager", item.text):
                uses.append(GrepUse(item.doc, item.text, "alertmanager_log", tuple(args)))
            elif re.match(r"docker-compose logs (-f )?app-prod", item.text):
                uses.append(GrepUse(item.doc, item.text, "app_stdout", tuple(args)))
            else:
                uses.append(GrepUse(item.doc, item.text, "unknown", tuple(args)))
    return uses


def _code_texts() -> list[tuple[str, str]]:
    """(doc, text) of every code span and code block."""
    out: list[tuple[str, str]] = []
    for path in DOCS:
        text = path.read_text()
        out += [(_rel(path), s) for s in _spans(text)]
        out += [(_rel(path), b) for b in re.findall(r"```\w*\n(.*?)```", text, flags=re.S)]
    return out


def metric_names() -> list[DocItem]:
    """Names that look like metrics (a metric suffix) in code, plus every PromQL/selector name."""
    found = {(doc, m) for doc, text in _code_texts() for m in METRIC_NAME.findall(text)}
    for item in metric_selectors():
        name = re.match(r"[a-z_:][a-z0-9_:]*", item.text)
        if name:
            found.add((item.doc, name.group(0)))
    return sorted(DocItem(doc, name) for doc, name in found)


def label_values() -> list[tuple[str, str, str, str]]:
    """(doc, metric, label, value) of each exact ``label="value"`` next to a metric name."""
    out: set[tuple[str, str, str, str]] = set()
    for doc, text in _code_texts():
        for metric, labels in re.findall(r"([a-z_:][a-z0-9_:]*)\{([^}]*)\}", text):
            for label, op, value in LABEL_PAIR.findall(labels):
                if op == "=":
                    out.add((doc, metric, label, value))
    return sorted(out)


def env_vars() -> list[DocItem]:
    return sorted({DocItem(doc, v) for doc, text in _code_texts() for v in ENV_VAR.findall(text)})

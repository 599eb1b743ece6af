"""`mobile-mm export check`: every export toolchain and runtime with its version.

The guide's "Validate SDKs: ensure mobile SDKs are available". Each format's writer declares the
packages it needs (``toolchain()``); a format is ready when all of them are installed. Asked for
by name (``--format``), a missing format fails the check; asked for nothing, every format is
listed and only the default install's formats count (``OPTIONAL_FORMATS`` are an extra).

Example::

    report = check_toolchains(["onnx"])
    report.ok                 # True when onnx and onnxruntime are installed
    print(report.text())      # onnx        ready    onnx 1.23.2, onnxruntime 1.32.0 ...
"""

from __future__ import annotations

import json
import platform as host
from collections.abc import Sequence
from dataclasses import dataclass, field

from mobile_multimodal.errors import ExportError, ExportErrorCode
from mobile_multimodal.export.formats import (
    FORMATS,
    OPTIONAL_FORMATS,
    PLATFORM_FORMATS,
    load_writer,
    package_version,
)


@dataclass
class FormatStatus:
    format: str
    runtime: str | None
    packages: dict[str, str | None]
    platforms: list[str]
    required: bool  # whether its absence fails the check
    optional: dict[str, str | None] = field(default_factory=dict)  # runtimes the bundle also serves
    install_hint: str | None = None
    problem: str | None = None

    @property
    def ready(self) -> bool:
        return self.problem is None and all(v is not None for v in self.packages.values())


@dataclass
class CheckReport:
    formats: list[FormatStatus] = field(default_factory=list)
    host: dict[str, str | None] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(f.ready for f in self.formats if f.required)

    def text(self) -> str:
        lines = [
            "host: " + ", ".join(f"{k} {v}" for k, v in self.host.items()),
            f"{'format':<12}{'status':<10}{'platforms':<14}toolchain and runtime",
        ]
        for f in self.formats:
            status = "ready" if f.ready else ("MISSING" if f.required else "optional")
            packages = ", ".join(f"{p} {v or '(not installed)'}" for p, v in f.packages.items())
            packages += "".join(f", {p} {v or '(not installed)'} (optional)" for p, v in f.optional.items())
            detail = packages or f.problem or ""
            if f.runtime:
                detail += f"; runs in {f.runtime}"
            if not f.ready and f.install_hint:
                detail += f"; install: {f.install_hint}"
            lines.append(f"{f.format:<12}{status:<10}{','.join(f.platforms):<14}{detail}")
        lines.append("all requested toolchains are ready" if self.ok else "a requested toolchain is missing")
        return "\n".join(lines)

    def json(self) -> str:
        return json.dumps(
            {
                "ok": self.ok,
                "host": self.host,
                "formats": [{**f.__dict__, "ready": f.ready} for f in self.formats],
            },
            indent=2,
        )


def format_status(fmt: str, required: bool) -> FormatStatus:
    platforms = [p for p, fmts in PLATFORM_FORMATS.items() if fmt in fmts]
    try:
        writer = load_writer(fmt)
    except ExportError as exc:
        return FormatStatus(fmt, None, {}, platforms, required, problem=exc.message)
    except ImportError as exc:  # the writer module itself imports something missing
        return FormatStatus(
            fmt, None, {}, platforms, required, problem=f"cannot load the {fmt} writer: {exc}"
        )
    packages = writer.toolchain()
    missing = [p for p, v in packages.items() if v is None]
    hint = getattr(writer, "install_hint", f"pip install {' '.join(missing)}")
    optional: dict[str, str | None] = getattr(writer, "optional_toolchain", dict)()
    return FormatStatus(fmt, writer.runtime, packages, platforms, required, optional, install_hint=hint)


def check_toolchains(formats: Sequence[str] = ()) -> CheckReport:
    """The status of ``formats`` (each required), or of every format when none is named."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ExportError(
            ExportErrorCode.UNKNOWN_FORMAT, f"unknown format {unknown[0]!r}; choose from {', '.join(FORMATS)}"
        )
    named = list(dict.fromkeys(formats))
    statuses = (
        [format_status(f, True) for f in named]
        if named
        else [format_status(f, f not in OPTIONAL_FORMATS) for f in FORMATS]
    )
    return CheckReport(
        statuses,
        {"python": host.python_version(), "torch": package_version("torch"), "machine": host.machine()},
    )

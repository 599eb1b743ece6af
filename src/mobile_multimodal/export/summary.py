"""The human-readable summary `mobile-mm export` prints from a bundle's manifest.

Example::

    print(format_manifest(manifest, Path("bundle")))
    # bundle: bundle (onnx for android, int2), 2.99 MB in 8 files, exported in 21.4 s
    # validation in onnxruntime (executed), max |diff| vs PyTorch 2.3e-05
    # task                bundle   PyTorch   n
    # captioning          6.7841    6.7841  32
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def format_manifest(manifest: dict[str, Any], out: Path) -> str:
    files = manifest["files"]
    size = sum(int(f["bytes"]) for f in files)
    v = manifest["validation"]
    lines = [
        f"bundle: {out} ({manifest['format']} for {manifest['platform']}, {manifest['quantization']}), "
        f"{size / 1e6:.2f} MB in {len(files)} files, exported in {manifest['duration_s']:.1f} s",
    ]
    if not v["executed"]:
        lines.append(f"validation in {v['runtime']}: not executed here ({v.get('reason', '')})")
        return "\n".join(lines)
    lines.append(f"validation in {v['runtime']} (executed), max |diff| vs PyTorch {v['max_abs_diff']:.2g}")
    lines.append(f"{'task':<18}{'bundle':>9}{'PyTorch':>10}{'n':>5}")
    counts = v.get("examples_per_task", {})
    for task, score in v["tasks"].items():
        lines.append(f"{task:<18}{score:>9.4f}{v['reference'][task]:>10.4f}{counts.get(task, 0):>5}")
    return "\n".join(lines)

"""Core ML export: each precision's bundle is converted ONCE per session (``coreml_bundle``).

Core ML cannot execute on Linux, so these tests check what can be checked without it: the
packages' inputs/outputs against bundle.json, the code width and size of the compressed
weights, and that the INT2 package decompresses to exactly the weights PyTorch computes with."""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mobile_multimodal.export.formats import package_version

pytestmark = pytest.mark.skipif(
    package_version("coremltools") is None, reason="coremltools is not installed (pip install '.[export]')"
)

Built = tuple[Path, dict[str, Any]]


@pytest.fixture(scope="session")
def coreml_bundle(bundles_dir: Path) -> Callable[[str], Built]:
    """quantization -> (bundle dir, manifest), each converted on first use only."""
    from mobile_multimodal.export.pipeline import export_model

    built: dict[str, Built] = {}

    def get(quantization: str) -> Built:
        if quantization not in built:
            out = bundles_dir / f"coreml-{quantization}"
            manifest = export_model(
                "default", platform="ios", fmt="coreml", quantization=quantization, out=out
            )
            built[quantization] = (out, manifest)
        return built[quantization]

    return get


def _inspection(manifest: dict[str, Any]) -> dict[str, Any]:
    inspection: dict[str, Any] = manifest["validation"]["inspection"]
    return inspection


@pytest.mark.slow
@pytest.mark.parametrize("quantization", ["fp32", "int8", "int4", "int2"])
def test_each_precision_converts_and_matches_its_bundle(
    coreml_bundle: Callable[[str], Built], quantization: str
) -> None:
    out, manifest = coreml_bundle(quantization)
    bundle = json.loads((out / "bundle.json").read_text())
    validation = manifest["validation"]
    assert manifest["format"] == "coreml" and manifest["platform"] == "ios"
    assert validation["executed"] is False and validation["runtime"] == "coremltools"
    if platform.system() != "Darwin":
        assert "macOS/iOS" in validation["reason"]
    inspection = _inspection(manifest)
    assert inspection["structure_matches_bundle"] and not inspection["mismatches"]
    for name, graph in bundle["graphs"].items():
        assert graph["file"] == f"{name}.mlpackage"
        seen = inspection["graphs"][name]
        assert seen["inputs"] == [i["name"] for i in graph["inputs"]]
        assert seen["outputs"] == [o["name"] for o in graph["outputs"]]
        assert (out / graph["file"] / "Data/com.apple.CoreML/weights/weight.bin").stat().st_size > 0
    listed = {f["path"] for f in manifest["files"]}
    assert any(p.startswith("decoder_step.mlpackage/") for p in listed)
    for entry in manifest["files"]:
        data = (out / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("quantization", "widths"),
    [("fp32", set()), ("int8", {"8"}), ("int4", {"4", "8"}), ("int2", {"2", "4", "8"})],
)
def test_every_packed_weight_is_stored_at_its_code_width(
    coreml_bundle: Callable[[str], Built], quantization: str, widths: set[str]
) -> None:
    from mobile_multimodal.export.graphs import build_graphs
    from mobile_multimodal.model.llm import MobileMultiModalLLM

    _, manifest = coreml_bundle(quantization)
    inspection = _inspection(manifest)
    assert set(inspection["compressed"]) == widths
    model = MobileMultiModalLLM.from_pretrained("default", quantization=quantization)
    for spec in build_graphs(model):
        compressed = sum(w["layers"] for w in inspection["graphs"][spec.name]["compressed"].values())
        assert compressed == len(_used_packed(spec)), spec.name  # none left float


def _digest(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values, dtype=np.float32).tobytes()).hexdigest()


def _used_packed(spec: Any) -> dict[str, int]:
    """digest of each packed weight the graph's exported program really uses -> its bits (a
    graph module may hold layers its forward never calls, e.g. the step's cross-attention K/V)."""
    import torch

    program = torch.export.export(spec.module, spec.example_inputs)
    params = program.graph_signature.inputs_to_parameters
    read = {
        params[n.name] for n in program.graph.nodes if n.op == "placeholder" and n.name in params and n.users
    }
    used = {_digest(program.state_dict[name].detach().numpy()) for name in read}
    packed = {_digest(qw.dequantize().numpy()): qw.bits for qw in spec.quantized.values()}
    return {d: bits for d, bits in packed.items() if d in used}


@pytest.mark.slow
def test_int2_weights_take_two_bits_per_weight(coreml_bundle: Callable[[str], Built]) -> None:
    _, int2 = coreml_bundle("int2")
    _, fp32 = coreml_bundle("fp32")
    two_bit = _inspection(int2)["compressed"]["2"]
    assert two_bit["code_bits_per_weight"] == 2.0  # 1/16 of the float32 weight it replaces
    # + a float32 scale and a float16 zero point per group of 80 and a 4-entry table per layer
    assert 2.0 < two_bit["bits_per_weight"] <= 2.0 + 48 / 80 + 0.01
    assert two_bit["bits"] / 8 <= two_bit["weights"] * 4 / 16 * 1.31
    # the whole packages (8-bit I/O layers, float norms and position tables included)
    ratio = _inspection(int2)["weight_bin_bytes"] / _inspection(fp32)["weight_bin_bytes"]
    assert ratio < 0.13


@pytest.mark.slow
def test_int2_package_decompresses_to_exactly_the_pytorch_weights(
    coreml_bundle: Callable[[str], Built],
) -> None:
    import coremltools as ct

    from mobile_multimodal.export.coreml import WEIGHTS_DIR, quiet_coremltools
    from mobile_multimodal.export.coreml_weights import load_program
    from mobile_multimodal.export.graphs import build_graphs
    from mobile_multimodal.model.llm import MobileMultiModalLLM

    out, _ = coreml_bundle("int2")
    model = MobileMultiModalLLM.from_pretrained("default", quantization="int2")
    step = {g.name: g for g in build_graphs(model)}["decoder_step"]
    expected = _used_packed(step)
    package = out / "decoder_step.mlpackage"
    with quiet_coremltools():
        program = load_program(ct.utils.load_spec(str(package)), package / WEIGHTS_DIR)
        ops = [
            o for o in program.functions["main"].operations if o.op_type == "constexpr_blockwise_shift_scale"
        ]
        found = [_digest(o.materialized_val_inference()) for o in ops]
    # every weight PyTorch computes with is in the package, bit for bit, once
    assert sorted(found) == sorted(expected)
    assert sorted(expected[d] for d in found).count(2) == 28  # 4 layers x q, k/v, out, cross q/out, mlp


def test_open_says_why_core_ml_cannot_run_here(tmp_path: Path) -> None:
    from mobile_multimodal.export.coreml import WRITER

    if platform.system() == "Darwin":
        pytest.skip("Core ML executes on macOS")
    reason = WRITER.open(tmp_path, {"graphs": {}})
    assert isinstance(reason, str) and platform.system() in reason


def test_toolchain_reports_coremltools() -> None:
    from mobile_multimodal.export.coreml import WRITER

    assert WRITER.toolchain() == {"coremltools": package_version("coremltools")}
    assert WRITER.toolchain()["coremltools"] is not None

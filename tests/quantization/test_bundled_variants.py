"""The shipped INT8 / INT4 / INT2 variants of the bundled model: they load, they are as small as
promised, their recorded accuracy loss meets the targets, and they pass fixed held-out examples.

These run once ``src/mobile_multimodal/weights/default/manifest.json`` exists (training writes it);
before that they are skipped with the reason.
"""

from __future__ import annotations

import json

import pytest

from mobile_multimodal.model import MobileMultiModalLLM, bundled_model_dir
from mobile_multimodal.model.quantized_layers import PackedWeight
from mobile_multimodal.training.evaluate import TASKS, evaluate_loaded

BUNDLED = bundled_model_dir()
pytestmark = pytest.mark.skipif(
    not (BUNDLED / "manifest.json").exists(), reason=f"no bundled model at {BUNDLED} yet (train it first)"
)
TARGETS = {"int8": 0.005, "int4": 0.01, "int2": 0.05}  # the maximum accuracy loss per task
FIXED_EXAMPLES = 24
# On the fixed examples a quantized model may miss at most this many more than fp32 on an
# exact-match task, and keep this fraction of fp32's CIDEr-D
ALLOWED_MISSES = {"int8": 0, "int4": 1, "int2": 1}
CIDER_KEPT = {"int8": 0.99, "int4": 0.97, "int2": 0.95}
# the widths each variant stores (quantization/policy.py: INT2 keeps the OCR reader's column
# projection at 4 bits)
WIDTHS = {"int8": {8}, "int4": {8, 4}, "int2": {8, 4, 2}}


def _manifest(q: str) -> dict:
    path = BUNDLED / q / "manifest.json"
    assert path.exists(), (
        f"the bundled model has no {q} variant at {path.parent}; build it with mobile-mm quantize"
    )
    return json.loads(path.read_text())


@pytest.mark.parametrize("q", list(TARGETS))
def test_variant_manifest_states_its_quantization_and_meets_the_loss_target(q: str) -> None:
    manifest = _manifest(q)
    section = manifest["quantization"]
    assert section["mode"] == q and section["bits"] == int(q[3:])
    assert section["layers"]["embeddings"]["bits"] == 8
    assert {spec["bits"] for spec in section["layers"].values()} == WIDTHS[q]
    # built from these very fp32 weights and the OCR language model they ship
    bundled = json.loads((BUNDLED / "manifest.json").read_text())
    files = {f["path"]: f["sha256"] for f in bundled["files"]}
    assert {f["path"]: f["sha256"] for f in section["source"]["files"]} == files
    fp32 = section["baseline_eval"]["tasks"]
    for task, result in manifest["eval"]["tasks"].items():
        assert result["n"] == fp32[task]["n"]
        loss = (fp32[task]["primary"] - result["primary"]) / fp32[task]["primary"]
        assert loss <= TARGETS[q], (task, loss)


def test_int2_file_is_at_most_a_tenth_of_fp32() -> None:
    fp32 = (BUNDLED / "model.safetensors").stat().st_size
    assert (BUNDLED / "int2" / "model.safetensors").stat().st_size <= fp32 / 10


@pytest.mark.slow
@pytest.mark.parametrize("q", list(TARGETS))
def test_variant_loads_packed_and_passes_the_fixed_held_out_examples(
    q: str, bundled_model: MobileMultiModalLLM
) -> None:
    model = MobileMultiModalLLM.from_pretrained("default", quantization=q)
    assert model.quantization == q
    packed = [m for m in model.network.modules() if isinstance(m, PackedWeight)]
    assert packed and {m.bits for m in packed} == WIDTHS[q]
    # packed weights are buffers, yet they are the same parameters as fp32's
    assert model.get_model_info()["parameters"] == bundled_model.get_model_info()["parameters"]
    got = evaluate_loaded(model, FIXED_EXAMPLES, TASKS)["tasks"]
    ref = evaluate_loaded(bundled_model, FIXED_EXAMPLES, TASKS)["tasks"]
    for task in TASKS:
        if task == "captioning":
            assert got[task]["primary"] >= CIDER_KEPT[q] * ref[task]["primary"], (task, got[task], ref[task])
        else:
            misses = round((ref[task]["primary"] - got[task]["primary"]) * got[task]["n"])
            assert misses <= ALLOWED_MISSES[q], (task, got[task]["primary"], ref[task]["primary"])

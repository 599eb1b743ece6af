"""Loading a quantized variant needs the model package only: the format is data the network reads."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from mobile_multimodal.model import MobileMultiModalLLM, ModelLoadError, bundled_model_dir
from mobile_multimodal.model.quantized_layers import QuantLinear
from mobile_multimodal.model.quantized_loading import load_quantized_into
from mobile_multimodal.model.quantized_weight import LayerSpec, from_codes

LAYER = "decoder.blocks.0.mlp.fc1"


def _variant(model: MobileMultiModalLLM) -> tuple[dict[str, torch.Tensor], dict, torch.Tensor]:
    """One layer stored at 4 bits with hand-made codes, every other tensor as it is."""
    weight = model.network.get_submodule(LAYER).weight
    out, n = weight.shape
    codes = torch.arange(out * n, dtype=torch.int64).reshape(out, n).remainder(16).to(torch.uint8)
    groups = -(-n // 16)
    qw = from_codes(codes, torch.full((out, groups), 0.125), torch.full((out, groups), 8.0), 4, 16, (out, n))
    state = {k: v for k, v in model.network.state_dict().items() if not k.startswith(LAYER + ".weight")}
    state.update({f"{LAYER}.qweight": qw.packed, f"{LAYER}.scales": qw.scales, f"{LAYER}.zeros": qw.zeros})
    section = {"mode": "int4", "layers": {LAYER: {**LayerSpec(4, 16, "linear").to_dict(), "shape": [out, n]}}}
    return state, section, qw.dequantize()


def test_a_variant_loads_into_packed_modules(tiny_model: MobileMultiModalLLM) -> None:
    state, section, expected = _variant(tiny_model)
    net = MobileMultiModalLLM.from_config(tiny_model.config, seed=1).network
    load_quantized_into(net, state, section)
    layer = net.get_submodule(LAYER)
    assert isinstance(layer, QuantLinear)
    assert torch.equal(layer.dequantized_weight(), expected)


def test_a_table_that_does_not_match_the_architecture_is_refused(tiny_model: MobileMultiModalLLM) -> None:
    state, section, _ = _variant(tiny_model)
    net = MobileMultiModalLLM.from_config(tiny_model.config, seed=1).network
    with pytest.raises(ModelLoadError) as info:
        load_quantized_into(net, state, {"layers": {}})
    assert info.value.code == "MODEL_MANIFEST_INVALID"
    section["layers"][LAYER]["shape"] = [1, 1]
    with pytest.raises(ModelLoadError) as info:
        load_quantized_into(net, state, section)
    assert info.value.code == "MODEL_WEIGHTS_INVALID"


def test_loading_a_variant_does_not_import_quantization() -> None:
    if not (bundled_model_dir() / "int2" / "manifest.json").exists():
        pytest.skip("no bundled int2 variant in this checkout")
    code = (
        "import sys; from mobile_multimodal.model import MobileMultiModalLLM; "
        "m = MobileMultiModalLLM.from_pretrained('default', quantization='int2'); "
        "assert m.quantization == 'int2'; "
        "assert not [n for n in sys.modules if n.startswith('mobile_multimodal.quantization')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600)

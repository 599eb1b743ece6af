from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mobile_multimodal.model import MobileMultiModalLLM, ModelLoadError, checkpoint
from mobile_multimodal.model.quantized_layers import (
    PackedWeight,
    QuantLinear,
    quantized_module,
    replace_module,
)
from mobile_multimodal.quantization.policy import make_plan
from mobile_multimodal.quantization.rtn import quantize_rtn_layers
from mobile_multimodal.quantization.variant_io import save_variant


def write_variant(model: MobileMultiModalLLM, model_dir: Path, bits: int) -> dict:
    plan = make_plan(model.network, bits, group_size=32)
    quantized = quantize_rtn_layers(model.network, plan)
    save_variant(model_dir / f"int{bits}", model, model.network, quantized, plan, "rtn", bits, 32)
    return quantized


def reference_network(model: MobileMultiModalLLM, quantized: dict) -> torch.nn.Module:
    """What the variant should compute: packed layers, every other tensor rounded to float16."""
    net = copy.deepcopy(model.network)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(p.half().float())
        for buf in net.buffers():
            if buf.is_floating_point():
                buf.copy_(buf.half().float())
    for name, qw in quantized.items():
        module = net.get_submodule(name)
        replace_module(net, module, quantized_module(qw, module))
    return net.eval()


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_variant_loads_through_from_pretrained_and_computes_the_same(
    bits: int, tiny_model: MobileMultiModalLLM, tmp_path: Path
) -> None:
    model_dir = tiny_model.save(tmp_path / "m")
    quantized = write_variant(tiny_model, model_dir, bits)
    loaded = MobileMultiModalLLM.from_pretrained(model_dir, quantization=f"int{bits}")
    assert loaded.quantization == f"int{bits}"
    assert isinstance(loaded.network.decoder.blocks[0].mlp.fc1, QuantLinear)
    assert loaded.network.decoder.tok is loaded.network.embeddings  # still tied
    ref = reference_network(tiny_model, quantized)
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    lines = torch.rand(2, 3, 32, 256) * 2 - 1
    ids, valid = loaded.encode_texts(["a red circle", "what shape is it ?"])
    with torch.no_grad():
        assert torch.equal(loaded.network.image_embeddings(images), ref.image_embeddings(images))
        assert torch.equal(loaded.network.read_text(lines), ref.read_text(lines))
        assert torch.equal(loaded.network.text_embeddings(ids, valid), ref.text_embeddings(ids, valid))
        tokens, _ = ref.encode_images(images)
        assert torch.equal(loaded.network.decoder(ids, tokens, valid), ref.decoder(ids, tokens, valid))


def test_manifest_states_mode_bits_group_size_and_every_layer(
    tiny_model: MobileMultiModalLLM, tmp_path: Path
) -> None:
    model_dir = tiny_model.save(tmp_path / "m")
    write_variant(tiny_model, model_dir, 2)
    section = json.loads((model_dir / "int2" / "manifest.json").read_text())["quantization"]
    assert (section["mode"], section["bits"], section["group_size"], section["method"]) == (
        "int2",
        2,
        32,
        "rtn",
    )
    layers = section["layers"]
    assert layers["embeddings"]["bits"] == 8 and layers["embeddings"]["group_size"] is None
    assert layers["encoder.stem.0.conv"] == {
        "bits": 8,
        "group_size": None,
        "kind": "conv2d",
        "shape": [8, 3, 3, 3],
    }
    assert layers["encoder.proj"]["bits"] == 8 and layers["ocr_head.fc2"]["bits"] == 8
    assert layers["decoder.blocks.1.cross_attn.kv"] == {
        "bits": 2,
        "group_size": 32,
        "kind": "linear",
        "shape": [96, 48],
    }


def test_variants_are_smaller_on_disk_and_in_memory(tiny_model: MobileMultiModalLLM, tmp_path: Path) -> None:
    model_dir = tiny_model.save(tmp_path / "m")
    sizes = {"fp32": (model_dir / "model.safetensors").stat().st_size}
    memory = {"fp32": sum(tiny_model.component_memory_bytes().values())}
    for bits in (8, 4, 2):
        write_variant(tiny_model, model_dir, bits)
        sizes[f"int{bits}"] = (model_dir / f"int{bits}" / "model.safetensors").stat().st_size
        loaded = MobileMultiModalLLM.from_pretrained(model_dir, quantization=f"int{bits}")
        memory[f"int{bits}"] = sum(loaded.component_memory_bytes().values())
        packed = [m for m in loaded.network.modules() if isinstance(m, PackedWeight)]
        assert all(m.qweight.dtype == torch.uint8 for m in packed)
    assert sizes["int2"] < sizes["int4"] < sizes["int8"] < sizes["fp32"] / 2
    assert memory["int2"] < memory["int4"] < memory["int8"] < memory["fp32"] / 2


def test_corrupt_variants_are_refused_with_a_code(tiny_model: MobileMultiModalLLM, tmp_path: Path) -> None:
    model_dir = tiny_model.save(tmp_path / "m")
    write_variant(tiny_model, model_dir, 2)
    variant = model_dir / "int2"
    # a packed tensor of the wrong size (re-hashed, so only the shape check can catch it)
    state = load_file(str(variant / "model.safetensors"))
    key = "decoder.blocks.0.mlp.fc1.qweight"
    state[key] = state[key][:, :-1].contiguous()
    save_file(state, str(variant / "model.safetensors"))
    manifest = json.loads((variant / "manifest.json").read_text())
    manifest["files"] = [checkpoint.file_entry(variant, "model.safetensors")]
    checkpoint.write_manifest(variant, manifest)
    with pytest.raises(ModelLoadError) as err:
        MobileMultiModalLLM.from_pretrained(model_dir, quantization="int2")
    assert err.value.code == "MODEL_WEIGHTS_INVALID" and "fc1" in str(err.value)
    # a quantization section without its layer table
    manifest["quantization"].pop("layers")
    checkpoint.write_manifest(variant, manifest)
    with pytest.raises(ModelLoadError) as err:
        MobileMultiModalLLM.from_pretrained(model_dir, quantization="int2")
    assert err.value.code == "MODEL_MANIFEST_INVALID"

"""Packed layers dequantize once per generation call, not once per generated token."""

from __future__ import annotations

import copy
import threading
from collections import Counter

import pytest
import torch

from mobile_multimodal.model import MobileMultiModalLLM
from mobile_multimodal.model.quantized_layers import (
    PackedWeight,
    quantized_module,
    replace_module,
    set_weight_cache,
)
from mobile_multimodal.model.weight_reuse import reuse_cache, reuse_weights
from mobile_multimodal.quantization.policy import make_plan
from mobile_multimodal.quantization.rtn import quantize_rtn_layers


@pytest.fixture
def int2_model(tiny_model: MobileMultiModalLLM) -> MobileMultiModalLLM:
    model = copy.copy(tiny_model)
    net = copy.deepcopy(tiny_model.network).eval()
    for name, qw in quantize_rtn_layers(net, make_plan(net, 2, 16)).items():
        module = net.get_submodule(name)
        replace_module(net, module, quantized_module(qw, module))
    model.network = net
    return model


def _count_dequantizations(monkeypatch: pytest.MonkeyPatch) -> Counter[int]:
    calls: Counter[int] = Counter()
    real = PackedWeight._dequantize

    def counting(self: PackedWeight) -> torch.Tensor:
        calls[id(self)] += 1
        return real(self)

    monkeypatch.setattr(PackedWeight, "_dequantize", counting)
    return calls


def test_decoding_dequantizes_each_weight_once_per_call(
    int2_model: MobileMultiModalLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = [torch.rand(64, 64, 3).numpy() for _ in range(2)]
    net = int2_model.network
    memory = sum(b.numel() * b.element_size() for b in net.buffers())
    steps = []
    fc = next(m for m in net.decoder.modules() if isinstance(m, PackedWeight))
    hook = fc.register_forward_hook(lambda *_: steps.append(1))
    calls = _count_dequantizations(monkeypatch)
    captions = int2_model.generate_captions(images, max_tokens=12)
    hook.remove()
    assert len(steps) > 2  # a decoder layer ran once per generated token
    assert calls and max(calls.values()) == 1  # but dequantized its weight once
    decoder_layers = {id(m) for m in net.decoder.modules() if isinstance(m, PackedWeight)}
    assert decoder_layers <= set(calls)
    assert reuse_cache() is None  # nothing kept after the call
    assert sum(b.numel() * b.element_size() for b in net.buffers()) == memory
    # the same tokens as with every float weight kept for good (set_weight_cache)
    monkeypatch.undo()
    set_weight_cache(net, True)
    try:
        assert int2_model.generate_captions(images, max_tokens=12) == captions
    finally:
        set_weight_cache(net, False)


def test_outside_a_scope_every_forward_dequantizes(
    int2_model: MobileMultiModalLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = next(m for m in int2_model.network.decoder.modules() if isinstance(m, PackedWeight))
    calls = _count_dequantizations(monkeypatch)
    layer.dequantized_weight()
    layer.dequantized_weight()
    assert calls[id(layer)] == 2
    with reuse_weights():
        first = layer.dequantized_weight()
        with reuse_weights():  # nested: the outer scope's cache
            assert layer.dequantized_weight() is first
    assert calls[id(layer)] == 3


def test_each_thread_has_its_own_scope() -> None:
    seen: list[object] = []
    with reuse_weights():
        assert reuse_cache() == {}
        worker = threading.Thread(target=lambda: seen.append(reuse_cache()))
        worker.start()
        worker.join()
    assert seen == [None]

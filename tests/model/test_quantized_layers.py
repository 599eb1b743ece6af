from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mobile_multimodal.model import MobileMultiModalLLM
from mobile_multimodal.model.quantized_layers import QuantConv2d, QuantEmbedding, QuantLinear, replace_module
from mobile_multimodal.quantization.schemes import quantize_rtn


def test_quant_linear_computes_with_its_packed_weight() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(160, 48)
    qw = quantize_rtn(linear.weight, 2, 80)
    q = QuantLinear(qw, linear.bias)
    x = torch.randn(3, 5, 160)
    assert torch.equal(q(x), F.linear(x, qw.dequantize(), linear.bias))
    # all the weight it holds is packed: 48 x 160 two-bit codes in 48 x 40 bytes + 2 groups per row
    assert q.qweight.dtype == torch.uint8 and q.qweight.shape == (48, 40)
    assert q.scales.shape == (48, 2) and q.scales.dtype == torch.float16
    assert not list(q.parameters())


def test_quant_conv_and_embedding_match_their_float_ops() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
    qc = QuantConv2d(quantize_rtn(conv.weight, 8), conv)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(qc(x), F.conv2d(x, qc.dequantized_weight(), None, 2, 1))
    assert torch.allclose(qc(x), conv(x), atol=0.05)

    emb = nn.Embedding(30, 16)
    qe = QuantEmbedding(quantize_rtn(emb.weight, 8))
    ids = torch.tensor([[0, 5, 29], [3, 3, 1]])
    assert torch.equal(qe(ids), F.embedding(ids, qe.weight))
    assert qe.weight.shape == (30, 16)
    assert torch.allclose(qe.weight, emb.weight, atol=0.02)


def test_replacing_the_tied_embedding_swaps_every_reference(tiny_model: MobileMultiModalLLM) -> None:
    import copy

    net = copy.deepcopy(tiny_model.network)
    new = QuantEmbedding(quantize_rtn(net.embeddings.weight, 8))
    assert replace_module(net, net.embeddings, new) == 3  # network, decoder and text encoder
    assert net.decoder.tok is new and net.text_encoder.tok is new and net.embeddings is new


def test_weight_cache_trades_memory_for_the_same_results(tiny_model: MobileMultiModalLLM) -> None:
    import copy

    from mobile_multimodal.model.quantized_layers import quantized_module, set_weight_cache
    from mobile_multimodal.quantization.policy import make_plan
    from mobile_multimodal.quantization.rtn import quantize_rtn_layers

    net = copy.deepcopy(tiny_model.network).eval()
    for name, qw in quantize_rtn_layers(net, make_plan(net, 2, 16)).items():
        module = net.get_submodule(name)
        replace_module(net, module, quantized_module(qw, module))
    images = torch.rand(2, 3, 64, 64)
    ids, valid = tiny_model.encode_texts(["a red circle"])

    def memory() -> int:
        return sum(b.numel() * b.element_size() for b in net.buffers())

    with torch.no_grad():
        packed = (net.image_embeddings(images), net.text_embeddings(ids, valid))
        before = memory()
        assert set_weight_cache(net, True) > 0
        cached = (net.image_embeddings(images), net.text_embeddings(ids, valid))
        assert memory() > 4 * before  # float copies of 2-bit weights
        assert all(torch.equal(a, b) for a, b in zip(packed, cached, strict=True))
        set_weight_cache(net, False)
        assert memory() == before
        assert "weight_cache" not in "".join(net.state_dict())

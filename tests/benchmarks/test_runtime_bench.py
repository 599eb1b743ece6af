"""The runtime benchmark's arithmetic and report, on known numbers (the real run is minutes long:
``python -m benchmarks.runtime.run``; its measuring code is the serving code these tests cover)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from benchmarks.runtime import report
from benchmarks.runtime import run as bench


def test_percentile_interpolates_like_numpy() -> None:
    assert bench.percentile([5.0, 1.0, 4.0, 2.0, 3.0], 50) == 3.0
    assert bench.percentile([1.0, 2.0], 90) == pytest.approx(1.9)
    with pytest.raises(ValueError):
        bench.percentile([], 50)


def test_per_token_is_the_marginal_cost_of_the_extra_tokens() -> None:
    # 10 tokens in 50 ms, 2 tokens in 18 ms: the 8 extra tokens cost 4 ms each
    assert bench.per_token_ms(0.050, 0.018, 10, 2) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        bench.per_token_ms(0.05, 0.02, 2, 2)


class _Captioner:
    def __init__(self, caption: str) -> None:
        self.caption = caption

    def generate_captions(self, images: list[Any], max_tokens: int = 32) -> list[str]:
        return [" ".join(self.caption.split()[:max_tokens])]


def test_token_count_includes_eos_or_the_token_past_the_budget() -> None:
    model = _Captioner("a large red circle in the center")
    assert bench.token_count(model, None, 32) == 8  # seven words and <eos>
    assert bench.token_count(model, None, 1) == 2  # the budget cut it: one past it was decoded


def _result() -> dict[str, Any]:
    def timing(ms: float) -> dict[str, float]:
        return {"median_ms": ms, "p90_ms": ms * 1.1}

    tasks = {
        task: {"identical_outputs": True, "pytorch": timing(20.0), "onnxruntime": timing(8.0)}
        for task in bench.TASKS
    }
    return {
        "options": {"threads": 1, "repeats": 3},
        "machine": {"cpu": "cpu", "cores": 2, "torch": "2.13.0", "onnxruntime": "1.32.0"},
        "notes": ["busy-machine smoke"],
        "precisions": {
            "fp32": {
                "per_token": {"pytorch": timing(6.0), "onnxruntime": timing(1.5)},
                "tasks": tasks,
                "batch": {
                    "size": 16,
                    "identical_outputs": True,
                    "pytorch": timing(500.0),
                    "onnxruntime": timing(625.0),
                },
            },
            "int2": {
                "per_token": {
                    "pytorch": timing(6.0),
                    "onnxruntime": timing(2.5),
                    "onnxruntime_shipped": timing(12.0),
                },
                "tasks": tasks,
            },
        },
    }


def test_summary_and_report_judge_the_target_per_precision(tmp_path: Path) -> None:
    result = _result()
    result["summary"] = bench.summarize(result)
    assert result["summary"]["fp32"]["per_token_speedup"] == pytest.approx(4.0)
    assert result["summary"]["fp32"]["per_token_target_met"] is True
    assert result["summary"]["int2"]["per_token_speedup"] == pytest.approx(2.4)
    assert result["summary"]["int2"]["per_token_target_met"] is False
    assert result["summary"]["int2"]["per_token_speedup_shipped"] == pytest.approx(0.5)
    assert result["summary"]["int2"]["task_speedup"]["ocr"] == pytest.approx(2.5)
    assert result["summary"]["fp32"]["batch_speedup"] == pytest.approx(0.8)  # batching pays in PyTorch
    text = report.markdown(result, result["notes"])
    assert "| fp32 | onnxruntime | 6.000 | 1.500 | 4.00x | met |" in text
    assert "| int2 | onnxruntime | 6.000 | 2.500 | 2.40x | NOT met |" in text
    assert "| int2 | onnxruntime_shipped | 6.000 | 12.000 | 0.50x | NOT met |" in text
    assert "> busy-machine smoke" in text
    assert "| fp32 | 500.0 | 625.0 | 0.80x | yes |" in text
    report.write_markdown(result, tmp_path / "results.md")
    assert (tmp_path / "results.md").read_text() == text


def test_the_served_weights_table_times_both_forms_per_batch_rows() -> None:
    """Real ONNX Runtime sessions, a small shape: every row count timed for both weight forms."""
    rows = bench.served_weights_by_rows(32, 48, 5)
    assert [r["rows"] for r in rows] == [1, 4, 16, 64]
    assert all(r["packed_us"] > 0 and r["float_us"] > 0 for r in rows)
    result = {**_result(), "served_weights_us": {"shape": [32, 48], "rows": rows}}
    result["summary"] = bench.summarize(result)
    text = report.markdown(result, result["notes"])
    assert "| rows | packed us | float us | packed / float |" in text
    first = rows[0]
    ratio = first["packed_us"] / first["float_us"]
    assert f"| 1 | {first['packed_us']:.1f} | {first['float_us']:.1f} | {ratio:.2f} |" in text


def _tiny_decoder_step(folder: Path) -> Path:
    """A graph shaped like a bundle's decoder_step (token, position, one layer's self_k cache ->
    logits): two 2-bit MatMulNBits of one shape, a float MatMul and a Gemm."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from mobile_multimodal.export.onnx import pack_low_first

    rng = np.random.default_rng(0)
    dim, block = 16, 16

    def packed(name: str) -> list[Any]:
        codes = rng.integers(0, 4, (dim, 1, block), dtype=np.uint8)
        return [
            numpy_helper.from_array(pack_low_first(codes, 2), f"{name}.b"),
            numpy_helper.from_array(rng.random(dim, dtype=np.float32), f"{name}.s"),
        ]

    def nbits(name: str, x: str, out: str) -> Any:
        inputs = [x, f"{name}.b", f"{name}.s"]
        return helper.make_node(
            "MatMulNBits", inputs, [out], domain="com.microsoft", K=dim, N=dim, bits=2, block_size=block
        )

    inits = [
        *packed("a"),
        *packed("b"),
        numpy_helper.from_array(rng.standard_normal((8, dim)).astype(np.float32), "embed"),
        numpy_helper.from_array(rng.standard_normal((dim, dim)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal((dim, dim)).astype(np.float32), "g"),
    ]
    nodes = [
        helper.make_node("Gather", ["embed", "token"], ["e"]),  # (1, 1, dim)
        helper.make_node("Reshape", ["e", "flat_2d"], ["x"]),
        nbits("a", "x", "h1"),
        nbits("b", "h1", "h2"),
        helper.make_node("MatMul", ["h2", "w"], ["h3"]),
        helper.make_node("Gemm", ["h3", "g"], ["h4"], transB=1),
        helper.make_node("ReduceSum", ["self_k_0"], ["c2"], keepdims=0),  # the cache read: a scalar
        helper.make_node("Add", ["h4", "c2"], ["logits"]),
    ]
    inits.append(numpy_helper.from_array(np.array([1, dim], dtype=np.int64), "flat_2d"))
    graph = helper.make_graph(
        nodes,
        "decoder_step",
        [
            helper.make_tensor_value_info("token", TensorProto.INT64, ["batch", 1]),
            helper.make_tensor_value_info("position", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("self_k_0", TensorProto.FLOAT, ["batch", 2, 8, 4]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, dim])],
        initializer=inits,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    path = folder / "decoder_step.onnx"
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return path


def test_shared_weights_leave_one_float_matrix_per_shape_and_the_graph_runs(tmp_path: Path) -> None:
    import numpy as np
    import onnx
    import onnxruntime as ort
    from benchmarks.runtime.step_breakdown import share_weights, step_feeds

    proto = onnx.load(str(_tiny_decoder_step(tmp_path)))
    assert share_weights(proto) == 4  # two MatMulNBits, the MatMul and the Gemm
    assert not [n for n in proto.graph.node if n.op_type == "MatMulNBits"]
    matrices = [i for i in proto.graph.initializer if len(i.dims) == 2 and i.name != "embed"]
    assert [(i.name, list(i.dims)) for i in matrices] == [("shared_weight_16x16", [16, 16])]
    assert not {"a.b", "w", "g"} & {i.name for i in proto.graph.initializer}  # unread: dropped
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = step_feeds(session, position=4)
    assert feeds["position"].tolist() == [4] and feeds["token"].tolist() == [[1]]
    assert session.run(None, feeds)[0].shape == (1, 16)
    assert np.isfinite(session.run(None, feeds)[0]).all()


def test_the_step_breakdown_times_every_form_and_the_report_shows_where_time_goes(tmp_path: Path) -> None:
    from benchmarks.runtime.step_breakdown import step_breakdown

    path = _tiny_decoder_step(tmp_path)
    step = step_breakdown(path.parent, path.name, threads=1, repeats=2, quantized=True)
    assert step["position"] == 4  # mid-cache: 8 slots
    assert all(step[f"{form}_us"] > 0 for form in ("served", "float_weights", "shared_weights"))
    assert "float_weights_us" not in step_breakdown(path.parent, path.name, 1, 1, quantized=False)
    result = _result()
    result["precisions"]["int2"]["step_us"] = {"served_us": 2000.0, "shared_weights_us": 1500.0}
    result["summary"] = bench.summarize(result)
    text = report.markdown(result, result["notes"])
    # 2.5 ms a token, 2.0 of them the served step, a quarter of which the weights' cost
    assert "| int2 | 2500 | 2000 | 1500 | 25% | - | 500 |" in text

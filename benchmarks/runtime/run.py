"""Runtime benchmark: per-token decode and per-request latency, eager PyTorch vs ONNX Runtime, in one run.

Issue 20 item 4's runtime target: decoding at least 3x faster per token on the ONNX Runtime
backend (``serve --runtime onnxruntime``) than in eager PyTorch at the same precision. Both sides
are what the server calls: ``MobileMultiModalLLM`` and ``serving.onnx_runtime_model.OnnxRuntimeModel``
on the bundle ``serving.runtime_loader`` exports and verifies (reused from ``--data-dir`` when
it is there), one request at a time (batch 1), the same intra-op thread count on both.

- Per-token decode: the marginal cost of one more generated token, measured the same way on
  both runtimes: a caption with the full budget (``max_tokens=32``, ``n`` tokens) minus the same
  caption cut at ``max_tokens=1`` (2 tokens), divided by ``n - 2``; image encoding and the prompt
  cancel out. The image is the held-out scene with the longest caption among the first
  ``--scenes`` (long captions are where decoding dominates). Median over ``--repeats``, the two
  runtimes alternating (ABBA) so a busy machine's drift hits both alike.
- Per request, per task (captioning, vqa, ocr, retrieval with two texts): median and p90 of
  the whole model call, preprocessing and decoding included.
- A full batch: 16 held-out scenes captioned in one call (the server's default
  ``MOBILE_MM_MAX_BATCH_SIZE``): both runtimes decode the 16 together (PyTorch's batched decode;
  on ONNX Runtime one ``decoder_step`` call per step for every row still answering,
  ``export/batch_decode.py``), as the server's batches are decoded.
- The outputs of the two runtimes are compared on every measured input (they must be equal).
- Where a token's time goes: one ``decoder_step`` call as served, with all weights shared
  (cache-resident) and with float weights (``step_breakdown.py``).
- The MatMulNBits kernels ONNX Runtime has on this CPU, at the model's decoder shapes: which
  bits / block / accuracy_level combinations are fast (explains the INT2 result).

Usage::

    .venv/bin/python -m benchmarks.runtime.run                        # fp32 and int2, bundled model
    .venv/bin/python -m benchmarks.runtime.run --repeats 5 --out /tmp/rt --note "busy machine"

Writes results.json, results.md and results.png (matplotlib) under --out (default: beside this file).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PRECISIONS = ("fp32", "int8", "int4", "int2")
TASKS = ("captioning", "vqa", "ocr", "retrieval")
# onnxruntime: as served (2-bit weights in 4-bit containers, the KV cache IO-bound: serving/onnx_sessions.py);
# onnxruntime_shipped: the bundle's bytes as a phone loads them (measured where they differ: int2);
# onnxruntime_float_weights: quantized weights dequantized to float MatMuls at load (not served by
# default: fp32 memory; measured for quantized precisions)
RUNTIMES = ("pytorch", "onnxruntime", "onnxruntime_shipped", "onnxruntime_float_weights")
TARGET_PER_TOKEN_SPEEDUP = 3.0
LONG, SHORT = 32, 1  # max_tokens of the two captions whose difference is the per-token cost
BATCH = 16  # the server's default MOBILE_MM_MAX_BATCH_SIZE


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def per_token_ms(long_s: float, short_s: float, long_tokens: int, short_tokens: int) -> float:
    """Milliseconds per generated token from two decodes of the same prompt and image."""
    if long_tokens <= short_tokens:
        raise ValueError(f"the long decode ({long_tokens} tokens) must be longer than {short_tokens}")
    return (long_s - short_s) * 1000 / (long_tokens - short_tokens)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def load_models(model: str, quantization: str, data_dir: Path, threads: int, examples: int) -> dict[str, Any]:
    """Both runtimes' models at ``quantization`` (the bundle exported into ``data_dir`` if absent)."""
    import torch

    from mobile_multimodal.model import MobileMultiModalLLM
    from mobile_multimodal.serving.onnx_runtime_model import OnnxRuntimeModel
    from mobile_multimodal.serving.runtime_loader import load_onnx_runtime_model
    from mobile_multimodal.settings import Settings

    torch.set_num_threads(threads)
    settings = Settings(
        model=model,
        quantization=quantization,
        runtime="onnxruntime",
        data_dir=data_dir,
        torch_threads=threads,
    )
    served = load_onnx_runtime_model(settings, export_examples=examples)
    models: dict[str, Any] = {
        "pytorch": MobileMultiModalLLM.from_pretrained(model, quantization=quantization),
        "onnxruntime": served,
    }
    if served.widened_2bit:
        models["onnxruntime_shipped"] = OnnxRuntimeModel.open(
            served.model_dir, served.manifest, threads=threads, widen_2bit=False
        )
    if quantization != "fp32":
        models["onnxruntime_float_weights"] = OnnxRuntimeModel.open(
            served.model_dir, served.manifest, threads=threads, float_weights=True
        )
    return models


def token_count(model: Any, image: Any, max_tokens: int) -> int:
    """Generated tokens of a caption (<eos> and the one-past-the-budget token included)."""
    words = model.generate_captions([image], max_tokens=max_tokens)[0].split()
    if len(words) >= max_tokens:
        return max_tokens + 1  # the budget cut it: max_tokens + 1 tokens were decoded
    return len(words) + 1  # the words and <eos>


def measure_per_token(models: dict[str, Any], image: Any, repeats: int) -> dict[str, Any]:
    tokens = {name: (token_count(m, image, LONG), token_count(m, image, SHORT)) for name, m in models.items()}
    samples: dict[str, list[float]] = {name: [] for name in models}
    order = list(models)
    for r in range(repeats):
        for name in order if r % 2 == 0 else order[::-1]:
            model = models[name]
            long_s, _ = _timed(lambda m=model: m.generate_captions([image], max_tokens=LONG))
            short_s, _ = _timed(lambda m=model: m.generate_captions([image], max_tokens=SHORT))
            samples[name].append(per_token_ms(long_s, short_s, *tokens[name]))
    return {
        name: {
            "median_ms": statistics.median(values),
            "p90_ms": percentile(values, 90),
            "tokens": {"long": tokens[name][0], "short": tokens[name][1]},
            "samples_ms": values,
        }
        for name, values in samples.items()
    }


def task_call(task: str, model: Any, inputs: dict[str, Any]) -> Callable[[], Any]:
    image = inputs[task]["image"]
    if task == "captioning":
        return lambda: model.generate_captions([image])
    if task == "vqa":
        return lambda: model.answer_questions([image], [inputs["vqa"]["question"]])
    if task == "ocr":
        return lambda: model.extract_texts([image])
    texts = inputs["retrieval"]["texts"]
    return lambda: (model.get_image_embeddings([image]) @ model.get_text_embeddings(texts).T).argmax()


def measure_tasks(models: dict[str, Any], inputs: dict[str, Any], repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for task in TASKS:
        samples: dict[str, list[float]] = {name: [] for name in models}
        outputs = {name: task_call(task, m, inputs)() for name, m in models.items()}  # also warms up
        order = list(models)
        for r in range(repeats):
            for name in order if r % 2 == 0 else order[::-1]:
                seconds, _ = _timed(task_call(task, models[name], inputs))
                samples[name].append(seconds * 1000)
        values = list(outputs.values())
        out[task] = {
            "identical_outputs": bool(all(_same(values[0], v) for v in values[1:])),
            "outputs": {name: _jsonable(v) for name, v in outputs.items()},
            **{
                name: {"median_ms": statistics.median(s), "p90_ms": percentile(s, 90)}
                for name, s in samples.items()
            },
        }
    return out


def measure_batch(models: dict[str, Any], images: list[Any], repeats: int) -> dict[str, Any]:
    """One captioning call on ``len(images)`` images, per runtime: median ms for the batch."""
    outputs = {name: m.generate_captions(images) for name, m in models.items()}  # also warms up
    samples: dict[str, list[float]] = {name: [] for name in models}
    order = list(models)
    for r in range(repeats):
        for name in order if r % 2 == 0 else order[::-1]:
            samples[name].append(_timed(lambda m=models[name]: m.generate_captions(images))[0] * 1000)
    values = list(outputs.values())
    return {
        "size": len(images),
        "identical_outputs": all(v == values[0] for v in values[1:]),
        **{
            name: {"median_ms": statistics.median(s), "p90_ms": percentile(s, 90)}
            for name, s in samples.items()
        },
    }


def _same(a: Any, b: Any) -> bool:
    import numpy as np

    return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def _jsonable(value: Any) -> Any:
    import numpy as np

    return np.asarray(value).tolist()


def benchmark_inputs(scenes: int) -> dict[str, Any]:
    """One held-out input per task; the captioning scene is the one with the longest reference."""
    from mobile_multimodal.data.splits import load_eval_split

    captions = load_eval_split("captioning", scenes)
    longest = max(captions, key=lambda e: max(len(c.split()) for c in e.captions))
    vqa = load_eval_split("vqa", 1)[0]
    retrieval = load_eval_split("retrieval", 2)
    return {
        "captioning": {"image": longest.image},
        "vqa": {"image": vqa.image, "question": vqa.question},
        "ocr": {"image": load_eval_split("ocr", 1)[0].image},
        "retrieval": {"image": retrieval[0].image, "texts": [retrieval[1].text, retrieval[0].text]},
        "batch": [e.image for e in load_eval_split("captioning", BATCH)],
    }


def _one_node_session(node: Any, initializers: list[Any], k: int, n: int) -> Any:
    """An ONNX Runtime session (one thread) of the single node ``node``: x (M, k) -> y (M, n)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])],
        initializer=initializers,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    model = helper.make_model(graph, opset_imports=opsets).SerializeToString()
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _matmul_nbits(k: int, n: int, bits: int, block: int, level: int) -> Any:
    import numpy as np
    from onnx import helper, numpy_helper

    blocks = k // block
    b = np.random.default_rng(1).integers(0, 255, (n, blocks, block * bits // 8), dtype=np.uint8)
    scales = np.random.default_rng(2).random(n * blocks, dtype=np.float32)
    node = helper.make_node(
        "MatMulNBits",
        ["x", "B", "S"],
        ["y"],
        domain="com.microsoft",
        K=k,
        N=n,
        bits=bits,
        block_size=block,
        accuracy_level=level,
    )
    initializers = [numpy_helper.from_array(b, "B"), numpy_helper.from_array(scales, "S")]
    return _one_node_session(node, initializers, k, n)


def _median_us(session: Any, rows: int, k: int, repeats: int) -> float:
    import numpy as np

    x = {"x": np.random.default_rng(0).random((rows, k), dtype=np.float32)}
    session.run(None, x)
    return statistics.median(_timed(lambda: session.run(None, x))[0] * 1e6 for _ in range(repeats))


def matmul_nbits_kernels(k: int, n: int, repeats: int) -> list[dict[str, Any]]:
    """Microseconds of one (1, k) x (k, n) MatMulNBits on this CPU per bits / block / accuracy_level."""
    return [
        {
            "bits": bits,
            "block": block,
            "accuracy_level": level,
            "median_us": _median_us(_matmul_nbits(k, n, bits, block, level), 1, k, repeats),
        }
        for bits in (2, 4, 8)
        for block in (16, 32)
        for level in (0, 4)
    ]


def served_weights_by_rows(k: int, n: int, repeats: int) -> list[dict[str, Any]]:
    """Microseconds of one (M, k) x (k, n) product per number of rows M (a server's decode batch):
    the 4-bit MatMulNBits an INT2 server runs by default (its 2-bit codes widened, block 16, level
    0) against the float MatMul of ``MOBILE_MM_ONNX_WEIGHTS=float``, interleaved."""
    import numpy as np
    from onnx import helper, numpy_helper

    weight = np.random.default_rng(3).standard_normal((k, n)).astype(np.float32)
    matmul = helper.make_node("MatMul", ["x", "W"], ["y"])
    sessions = {
        "packed_us": _matmul_nbits(k, n, 4, 16, 0),
        "float_us": _one_node_session(matmul, [numpy_helper.from_array(weight, "W")], k, n),
    }
    out = []
    for rows in (1, 4, 16, 64):
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(5):  # alternate, so a drift of the machine's speed hits both alike
            for name, session in sessions.items():
                times[name].append(_median_us(session, rows, k, max(1, repeats // 5)))
        out.append({"rows": rows, **{name: statistics.median(t) for name, t in times.items()}})
    return out


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """PyTorch / ONNX Runtime ratios per precision (> 1: ONNX Runtime is faster)."""
    summary: dict[str, Any] = {}
    for q, per in result["precisions"].items():
        tok = per["per_token"]
        speedup = tok["pytorch"]["median_ms"] / tok["onnxruntime"]["median_ms"]
        summary[q] = {
            "per_token_speedup": speedup,
            "per_token_target_met": speedup >= TARGET_PER_TOKEN_SPEEDUP,
            "task_speedup": {
                task: t["pytorch"]["median_ms"] / t["onnxruntime"]["median_ms"]
                for task, t in per["tasks"].items()
            },
            "identical_outputs": all(t["identical_outputs"] for t in per["tasks"].values()),
        }
        if "batch" in per:
            batch = per["batch"]
            summary[q]["batch_speedup"] = batch["pytorch"]["median_ms"] / batch["onnxruntime"]["median_ms"]
            summary[q]["identical_outputs"] &= bool(batch["identical_outputs"])
        if "onnxruntime_shipped" in tok:
            summary[q]["per_token_speedup_shipped"] = (
                tok["pytorch"]["median_ms"] / tok["onnxruntime_shipped"]["median_ms"]
            )
        if "onnxruntime_float_weights" in tok:
            summary[q]["per_token_speedup_float_weights"] = (
                tok["pytorch"]["median_ms"] / tok["onnxruntime_float_weights"]["median_ms"]
            )
    return summary


def machine() -> dict[str, Any]:
    import onnxruntime
    import torch
    from benchmarks.serving.run import host

    return {**host(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from benchmarks.runtime.report import plot, write_markdown
    from benchmarks.runtime.step_breakdown import step_breakdown

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--precisions", default="fp32,int2", help=f"comma-separated, of {PRECISIONS}")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads, both runtimes")
    parser.add_argument(
        "--scenes", type=int, default=16, help="held-out scenes to pick the longest caption from"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path("var"), help="where bundles are exported/reused"
    )
    parser.add_argument(
        "--export-examples", type=int, default=8, help="validation examples per task of an export"
    )
    parser.add_argument("--note", action="append", default=[], help="a line for results.md (repeatable)")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    precisions = [p for p in args.precisions.split(",") if p]
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown or args.repeats < 1:
        parser.error(f"unknown precisions {unknown}" if unknown else "--repeats must be >= 1")
    info = machine()
    inputs = benchmark_inputs(args.scenes)
    result: dict[str, Any] = {
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": info,
        "notes": args.note,
        "precisions": {},
    }
    for q in precisions:
        models = load_models(args.model, q, args.data_dir, args.threads, args.export_examples)
        for model in models.values():  # warm up: first calls allocate
            task_call("captioning", model, inputs)()
        result["precisions"][q] = {
            "bundle": str(models["onnxruntime"].model_dir),
            "per_token": measure_per_token(models, inputs["captioning"]["image"], args.repeats),
            "tasks": measure_tasks(models, inputs, args.repeats),
            "batch": measure_batch(models, inputs["batch"], max(1, args.repeats // 3)),
        }
        served = models["onnxruntime"]
        result["precisions"][q]["step_us"] = step_breakdown(
            served.model_dir,
            served.spec["graphs"]["decoder_step"]["file"],
            args.threads,
            args.repeats,
            quantized=q != "fp32",
        )
        print(q, json.dumps({k: v["median_ms"] for k, v in result["precisions"][q]["per_token"].items()}))
    config = models["pytorch"].config
    k, n = int(config.dim), int(config.dim * config.mlp_ratio)  # the decoder's MLP input layer
    result["matmul_nbits_us"] = {"shape": [k, n], "rows": matmul_nbits_kernels(k, n, 50)}
    result["served_weights_us"] = {"shape": [k, n], "rows": served_weights_by_rows(k, n, 100)}
    info["loadavg_at_end"] = list(os.getloadavg())
    result["summary"] = summarize(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, args.out / "results.md")
    plot(result, args.out / "results.png")
    print(json.dumps(result["summary"], indent=2))
    return result


if __name__ == "__main__":
    main()

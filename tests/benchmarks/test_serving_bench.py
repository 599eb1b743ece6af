"""The serving benchmark runs end to end (our real server, the plain peer and LitServe, real wrk,
the task mix) and writes its report, ratios, correctness check and plots."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from mobile_multimodal.model import MobileMultiModalLLM, ModelConfig


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk is not installed (scripts/install_system_deps.sh)"
)
def test_serving_benchmark_end_to_end(tmp_path: Path) -> None:
    from benchmarks.serving.run import main

    model_dir = MobileMultiModalLLM.from_config(ModelConfig.tiny(), seed=0).save(tmp_path / "model")
    out = tmp_path / "out"
    argv = ["--model", str(model_dir), "--precisions", "fp32", "--tasks", "mix"]
    argv += ["--peers", "plain_fastapi,litserve"]
    argv += [
        "--duration",
        "1",
        "--repeats",
        "1",
        "--model-iters",
        "5",
        "--max-tokens",
        "4",
        "--out",
        str(out),
        "--onnx-data-dir",
        str(tmp_path / "onnx-data"),
    ]
    result = main(argv)
    saved = json.loads((out / "results.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(result["summary"]))
    servers = saved["precisions"]["fp32"]["servers"]
    assert set(servers) == {
        "ours",
        "ours_no_batching",
        "ours_continuous",
        "ours_onnxruntime",
        "ours_onnxruntime_continuous",
        "plain_fastapi",
        "litserve",
    }
    for name, srv in servers.items():
        assert srv["ready_s"] > 0 and srv["rss_bytes"]["ready"] > 50 * 2**20, name
        for task in ("mix",):
            for c in ("1", "8", "32"):
                run = srv["tasks"][task][c]["runs"][0]
                assert run["requests"] > 0 and run["non_2xx"] == 0 and run["socket_errors"] == 0
    # batching off never forms a batch of more than one; batching on does under concurrency 32
    off = servers["ours_no_batching"]["tasks"]["mix"]["32"]["batches_by_size"]
    assert all(v == 0 for k, v in off.items() if k != "1")
    on = servers["ours"]["tasks"]["mix"]["32"]["batches_by_size"]
    assert any(v > 0 for k, v in on.items() if k != "1")
    summary = saved["summary"]["fp32"]
    assert summary["model_load_s"] == servers["ours"]["model_load_duration_seconds"] > 0
    ratio = summary["vs_peers"]["plain_fastapi"]["mix"]["32"]
    ours = servers["ours"]["tasks"]["mix"]["32"]["median"]
    peer = servers["plain_fastapi"]["tasks"]["mix"]["32"]["median"]
    assert ratio["rps"] == pytest.approx(ours["rps"] / peer["rps"])
    assert ratio["p99"] == pytest.approx(ours["p99_ms"] / peer["p99_ms"])
    # every server answered the mix's 16 requests (16 at a time) as the model does in-process
    correctness = saved["precisions"]["fp32"]["correctness"]
    assert correctness["requests"] == 16 and set(correctness["servers"]) == set(servers)
    assert correctness["all_identical"] is True, correctness
    assert summary["answers_identical"] is True
    # against the frameworks (LitServe is the only one here): ratios from the medians
    continuous = summary["vs_frameworks_continuous"]["mix"]["throughput_c32"]
    assert continuous["ours"] == servers["ours_continuous"]["tasks"]["mix"]["32"]["median"]["rps"]
    on_onnx = summary["vs_frameworks_onnxruntime"]["mix"]["throughput_c32"]
    assert on_onnx["ours"] == servers["ours_onnxruntime"]["tasks"]["mix"]["32"]["median"]["rps"]
    assert any(p.name.startswith("onnx-fp32-") for p in (tmp_path / "onnx-data" / "bundles").iterdir())
    versus = summary["vs_frameworks"]["mix"]
    lit = servers["litserve"]["tasks"]["mix"]
    ours_mix = servers["ours"]["tasks"]["mix"]
    assert versus["throughput_c32"]["peer"] == "litserve"
    assert versus["throughput_c32"]["ratio"] == pytest.approx(
        ours_mix["32"]["median"]["rps"] / lit["32"]["median"]["rps"]
    )
    assert versus["p50_c1"]["met"] == (ours_mix["1"]["median"]["p50_ms"] <= lit["1"]["median"]["p50_ms"])
    md = (out / "results.md").read_text()
    assert "| precision | target | measured | met |" in md and "## Ours / `plain_fastapi`" in md
    assert "## Ours against the best framework peer" in md and "| fp32 | litserve | yes | 0 / 16 |" in md
    assert "load average at start" in md
    for plot in ("latency.png", "throughput.png", "model_batching.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"


def test_the_plain_peer_answers_our_request_body(tiny_model: MobileMultiModalLLM) -> None:
    """The peer takes the same body as our /inference, so the same load scripts hit both."""
    from benchmarks.peers.plain_fastapi import create_app
    from benchmarks.serving.workload import task_body
    from fastapi.testclient import TestClient

    client = TestClient(create_app(tiny_model))
    for task in ("captioning", "ocr", "vqa", "retrieval"):
        response = client.post("/inference", json=task_body(task))
        assert response.status_code == 200, response.text
        result = response.json()["result"]
        assert set(result) & {"caption", "text", "answer", "scores"}, result
    caption = client.post("/inference", json=task_body("captioning", max_tokens=3)).json()["result"]
    image = Image.open(io.BytesIO(base64.b64decode(task_body("captioning")["image"].split(",", 1)[1])))
    assert caption["caption"] == tiny_model.generate_caption(image.convert("RGB"), 3)
    assert client.get("/ready").status_code == 200


def test_a_run_without_requests_is_reported_not_divided_by() -> None:
    """A wrk run that completed nothing (a machine too busy for its duration) shows as n/a."""
    from benchmarks.serving.report import summarize

    def run(rps: float, p: float) -> dict[str, object]:
        return {"median": {"rps": rps, "p50_ms": p, "p95_ms": p * 2, "p99_ms": p * 3, "mean_ms": p}}

    def server(rps: float, p: float) -> dict[str, object]:
        tasks = {"captioning": {str(c): run(rps, p) for c in (1, 8, 32)}}
        return {
            "ready_s": 1.0,
            "rss_bytes": {"ready": 1, "after_load": 1},
            "model_load_duration_seconds": 2.0,
            "tasks": tasks,
        }

    per = {
        "model_only": {"batch1": {"p50_ms": 5.0}},
        "servers": {
            "ours": server(40, 10),
            "ours_no_batching": server(10, 20),
            "plain_fastapi": server(0, 0),
        },
    }
    result = {"options": {"tasks": ["captioning"], "peers": ["plain_fastapi"]}, "precisions": {"int2": per}}
    summary = summarize(result)["int2"]
    assert summary["batching_speedup_c32"] == 4.0 and summary["serving_overhead_p50_ms"] == 5.0
    assert summary["model_load_under_10s"] is True
    assert summary["vs_peers"]["plain_fastapi"]["captioning"]["8"] == {
        "rps": None,
        "p50": None,
        "p95": None,
        "p99": None,
    }


def test_the_deploy_guides_capacity_table_reads_this_format() -> None:
    """docs/deploy.md's capacity table (tests/deploy/capacity.py) takes our INT2 captioning runs
    from results.json as this benchmark writes it now."""
    from tests.deploy.capacity import served_arm

    runs = {"1": {"median": {"rps": 70.0, "p95_ms": 15.0}}}
    data = {"precisions": {"int2": {"servers": {"ours": {"tasks": {"captioning": runs}}}}}}
    assert served_arm(data) is runs


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk is not installed (scripts/install_system_deps.sh)"
)
def test_interleaved_servers_run_at_once_and_take_turns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--interleave``: every server of the precision is up together, and within each cell the
    wrk runs alternate between them (ABC, CBA), real wrk against real servers."""
    from benchmarks.serving import run

    calls: list[tuple[str, int]] = []
    real_wrk = run.run_wrk

    def recorded(url: str, concurrency: int, duration: int, body_file: Path) -> dict[str, float]:
        calls.append((url, concurrency))
        return real_wrk(url, concurrency, duration, body_file)

    monkeypatch.setattr(run, "run_wrk", recorded)
    model_dir = MobileMultiModalLLM.from_config(ModelConfig.tiny(), seed=0).save(tmp_path / "model")
    argv = ["--model", str(model_dir), "--precisions", "fp32", "--tasks", "mix", "--interleave"]
    argv += ["--peers", "plain_fastapi", "--ours", "ours,ours_no_batching", "--duration", "1"]
    argv += ["--repeats", "2", "--model-iters", "5", "--max-tokens", "4", "--out", str(tmp_path / "out")]
    argv += ["--onnx-data-dir", str(tmp_path / "onnx-data")]
    result = run.main(argv)
    servers = result["precisions"]["fp32"]["servers"]
    assert list(servers) == ["ours", "ours_no_batching", "plain_fastapi"]
    assert result["options"]["interleave"] is True
    # one warm-up run each (c=8) with every server up, then per concurrency: A B C, then C B A
    warm_up, measured = calls[: len(servers)], calls[len(servers) :]
    assert [c for _, c in warm_up] == [8] * 3 and len({url for url, _ in warm_up}) == 3
    cells = [measured[i : i + 6] for i in range(0, len(measured), 6)]
    assert [[c for _, c in cell] for cell in cells] == [[1] * 6, [8] * 6, [32] * 6]
    for cell in cells:
        order = [url for url, _ in cell]
        assert order[:3] == order[3:][::-1] and len(set(order)) == 3
    for srv in servers.values():
        for c in ("1", "8", "32"):
            assert len(srv["tasks"]["mix"][c]["runs"]) == 2
            assert all(r["requests"] > 0 and r["non_2xx"] == 0 for r in srv["tasks"]["mix"][c]["runs"])
    assert result["summary"]["fp32"]["answers_identical"] is True

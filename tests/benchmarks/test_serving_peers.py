"""The serving benchmark's framework peers (LitServe, BentoML), its task mix and its report.

LitServe comes with the dev extra and runs for real in the end-to-end test
(test_serving_bench.py). BentoML runs from its own venv (var/peer-venvs/bentoml, a few minutes
to build): its test runs when that venv is built, or builds it first when
``BENCH_BUILD_PEER_VENVS=1``, and is skipped with that reason otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import psutil
import pytest
from benchmarks.peers import PEERS
from benchmarks.peers.batched_model import BadRequest, parse_request, run_batch
from benchmarks.serving.answers import check, collect_answers, reference_answers
from benchmarks.serving.report_frameworks import versus_frameworks
from benchmarks.serving.workload import MIX, MIX_KINDS, bodies_for, mix_items, write_bodies_file

from mobile_multimodal.data.scenes import parse_caption_objects
from mobile_multimodal.model import MobileMultiModalLLM
from mobile_multimodal.serving.schemas import DEFAULT_MAX_TOKENS

HERE = Path(__file__).resolve().parents[2] / "benchmarks" / "serving"


def test_the_mix_is_fixed_and_holds_short_and_long_captions_vqa_and_ocr() -> None:
    items = mix_items()
    assert len(items) == 16 and [i.kind for i in items[:4]] == list(MIX_KINDS)
    assert {k: sum(i.kind == k for i in items) for k in MIX_KINDS} == dict.fromkeys(MIX_KINDS, 4)
    for item in items:
        n = len(parse_caption_objects(item.expected))
        if item.kind == "caption_short":
            assert n == 1, item.expected
        elif item.kind == "caption_long":
            assert n == 3, item.expected
    short = [len(i.expected.split()) for i in items if i.kind == "caption_short"]
    long = [len(i.expected.split()) for i in items if i.kind == "caption_long"]
    assert max(short) < min(long)
    assert all(i.body["question"] for i in items if i.kind == "vqa")
    assert len({i.body["image"] for i in items}) == 16  # 16 different images
    mix_items.cache_clear()
    assert mix_items() == items  # the same requests every run (fixed seed)


def test_the_mix_body_file_is_one_json_body_a_line_with_budgets_where_they_apply(tmp_path: Path) -> None:
    path = write_bodies_file(bodies_for(MIX, max_tokens=5), tmp_path / "mix.jsonl")
    lines = path.read_text().splitlines()
    assert len(lines) == 16
    bodies = [json.loads(line) for line in lines]
    assert [b["task"] for b in bodies] == [i.task for i in mix_items()]
    assert all(b.get("max_tokens") == (5 if b["task"] != "ocr" else None) for b in bodies)
    assert bodies_for("ocr") == [json.loads(write_bodies_file(bodies_for("ocr"), tmp_path / "o").read_text())]


class _Recorder(BaseHTTPRequestHandler):
    seen: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        self.seen.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    _Recorder.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(30)


@pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk is not installed (scripts/install_system_deps.sh)"
)
def test_wrk_rotates_through_the_mix_in_order(recorder: str, tmp_path: Path) -> None:
    """post.lua sends the mix's bodies in turn: one connection sees them in file order, round
    and round."""
    bodies = bodies_for(MIX)
    path = write_bodies_file(bodies, tmp_path / "mix.jsonl")
    cmd = ["wrk", "-t1", "-c1", "-d2s", "-s", str(HERE / "post.lua"), recorder + "/inference"]
    out = subprocess.run(
        cmd, env={**os.environ, "BENCH_BODY_FILE": str(path)}, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("WRK_JSON "))[9:])
    seen = [json.loads(b) for b in _Recorder.seen]
    assert summary["requests"] >= 1 and summary["non_2xx"] == 0
    assert len(seen) >= 2  # a wrap past the 16th shows too wherever more were sent
    start = bodies.index(seen[0])  # wrk may call request() before the first send
    assert seen == [bodies[(start + i) % 16] for i in range(len(seen))]


def test_a_batch_of_mixed_tasks_answers_as_one_request_at_a_time(tiny_model: MobileMultiModalLLM) -> None:
    """The framework peers' batch function groups by task and budget; every answer is the one
    the request gets alone, in its place."""
    requests = [parse_request(item.body) for item in mix_items()[:8]]
    batched = run_batch(tiny_model, requests)
    alone = [run_batch(tiny_model, [r])[0] for r in requests]
    assert batched == alone
    assert [b["task"] for b in batched] == [r.task for r in requests]
    assert requests[0].max_tokens == DEFAULT_MAX_TOKENS["captioning"]
    for bad in ({"task": "retrieval", "image": "x"}, {"task": "ocr", "image": "!!"}, {"task": "vqa"}, []):
        with pytest.raises(BadRequest):
            parse_request(bad)
    with pytest.raises(BadRequest, match="question"):
        parse_request({**mix_items()[0].body, "task": "vqa"})


def _per(cells: dict[str, dict[int, tuple[float, float, float]]]) -> dict[str, Any]:
    """A precision's result with, per server, (rps, p50, p99) at c=1 and c=32 for the mix."""

    def cell(rps: float, p50: float, p99: float) -> dict[str, Any]:
        return {"median": {"rps": rps, "p50_ms": p50, "p95_ms": p99, "p99_ms": p99, "mean_ms": p50}}

    return {
        "servers": {
            name: {"tasks": {MIX: {str(c): cell(*v) for c, v in by_c.items()}}}
            for name, by_c in cells.items()
        }
    }


def test_ours_is_compared_with_the_best_framework_peer_for_each_measure() -> None:
    per = _per(
        {
            "ours": {1: (20, 50, 60), 32: (90, 300, 400)},
            "litserve": {1: (19, 52, 70), 32: (60, 500, 450)},
            "bentoml": {1: (21, 48, 55), 32: (50, 600, 380)},
        }
    )
    r = versus_frameworks(per, ["litserve", "bentoml"], MIX)
    assert r is not None
    assert r["throughput_c32"] == {
        "peer": "litserve",
        "ours": 90,
        "peer_value": 60,
        "ratio": 1.5,
        "met": True,
    }
    assert r["p99_c32"]["peer"] == "bentoml" and r["p99_c32"]["met"] is False  # 400 vs 380
    assert r["p99_c32"]["ratio"] == pytest.approx(400 / 380)
    assert r["p50_c1"]["peer"] == "bentoml" and r["p50_c1"]["met"] is False  # 50 vs 48
    assert versus_frameworks(per, [], MIX) is None
    # 1.49x misses; a p50 equal to the best peer's is "no worse"
    per = _per(
        {"ours": {1: (20, 48, 60), 32: (89.4, 300, 370)}, "bentoml": {1: (21, 48, 55), 32: (60, 600, 380)}}
    )
    r = versus_frameworks(per, ["bentoml"], MIX)
    assert r is not None
    assert r["throughput_c32"]["met"] is False and r["p50_c1"]["met"] is True and r["p99_c32"]["met"] is True


def test_a_peer_that_completed_nothing_has_no_latency_to_beat() -> None:
    per = _per(
        {
            "ours": {1: (20, 50, 60), 32: (90, 300, 400)},
            "litserve": {1: (19, 52, 70), 32: (0, 0, 0)},
            "bentoml": {1: (21, 48, 55), 32: (50, 600, 500)},
        }
    )
    r = versus_frameworks(per, ["litserve", "bentoml"], MIX)
    assert r is not None
    assert r["throughput_c32"]["peer"] == "bentoml" and r["throughput_c32"]["ratio"] == 1.8
    assert r["p99_c32"]["peer"] == "bentoml" and r["p99_c32"]["met"] is True
    only_zero = _per({"ours": {1: (1, 1, 1), 32: (5, 1, 1)}, "litserve": {1: (0, 0, 0), 32: (0, 0, 0)}})
    r = versus_frameworks(only_zero, ["litserve"], MIX)
    assert r is not None
    assert (
        r["throughput_c32"]["ratio"] is None and r["throughput_c32"]["met"] is True
    )  # ours served, it did not
    assert r["p99_c32"] == {"peer": None, "ours": 1, "peer_value": None, "ratio": None, "met": None}


def test_the_correctness_check_names_every_answer_that_differs() -> None:
    items = mix_items()
    reference = [i.expected for i in items]
    wrong = list(reference)
    wrong[1] = "a large red circle"
    failed = list(reference)
    failed[3] = None
    result = check(
        reference,
        {
            "ours": {"answers": list(reference), "errors": [None] * 16},
            "litserve": {"answers": wrong, "errors": [None] * 16},
            "bentoml": {"answers": failed, "errors": [None] * 3 + ["HTTP 503: overloaded"] + [None] * 12},
        },
        items,
    )
    assert result["all_identical"] is False and result["servers"]["ours"]["identical"] is True
    assert result["servers"]["ours"]["accuracy"]["all"] == 1.0 == result["reference_accuracy"]["all"]
    (m,) = result["servers"]["litserve"]["mismatches"]
    assert m["index"] == 1 and m["kind"] == "caption_long" and m["answer"] == "a large red circle"
    assert result["servers"]["litserve"]["accuracy"]["caption_long"] == 0.75
    (m,) = result["servers"]["bentoml"]["mismatches"]
    assert m["error"] == "HTTP 503: overloaded" and result["servers"]["bentoml"]["accuracy"]["ocr"] == 0.75


def _bentoml_unavailable() -> str | None:
    reason = PEERS["bentoml"].unavailable()
    if reason is None or os.environ.get("BENCH_BUILD_PEER_VENVS") == "1":
        return None
    return f"{reason}; BENCH_BUILD_PEER_VENVS=1 builds it (a few minutes)"


BENTOML_ROUNDS = 8  # 8 x 16 = 128 calls: past the 100 after which BentoML 1.4.40 recycles its client


def _batch_sizes(metrics_text: str) -> tuple[float, float]:
    """(requests, batches) that BentoML's adaptive batching reports for ``ModelService.infer``."""
    from prometheus_client.parser import text_string_to_metric_families

    name = "bentoml_service_adaptive_batch_size"
    values = {
        s.name: s.value
        for family in text_string_to_metric_families(metrics_text)
        for s in family.samples
        if s.name.startswith(name) and s.labels.get("method_name") == "infer"
    }
    return values[name + "_sum"], values[name + "_count"]


@pytest.mark.slow
@pytest.mark.skipif(_bentoml_unavailable() is not None, reason=str(_bentoml_unavailable()))
def test_the_bentoml_peer_answers_the_mix_as_the_model_does(tmp_path: Path) -> None:
    """BentoML from its own venv, for real: our body in, our response out, batched answers equal
    to the model's own, and nothing of it left running once stopped. The mix goes round 8 times,
    16 requests in flight all along: past BentoML's default client recycling (every 100 calls),
    which closed the session under the calls in flight and answered them with 500s (12 of 16
    int2 answers in a benchmark run) until the peer turned it off."""
    import httpx
    from benchmarks.serving.servers import serve_peer

    PEERS["bentoml"].prepare(tmp_path / "venv.log")
    model = MobileMultiModalLLM.from_pretrained("default", quantization="int2")
    assert {i.task for i in mix_items()} == {"captioning", "vqa", "ocr"}
    items = mix_items() * BENTOML_ROUNDS
    reference = reference_answers(model, mix_items()) * BENTOML_ROUNDS
    with serve_peer("bentoml", "default", "int2") as server:
        under = psutil.Process(server.process.pid).children(recursive=True)
        assert under, "BentoML serves from worker processes"
        got = collect_answers(server.url, items)  # 16 threads: a new request as each one ends
        requests, batches = _batch_sizes(httpx.get(server.url + "/metrics", timeout=60).text)
    assert [(i, e) for i, e in enumerate(got["errors"]) if e] == []
    assert check(reference, {"bentoml": got}, items)["all_identical"] is True
    assert requests == len(items)
    assert batches < requests  # adaptive batching merged calls (16 in flight at a time)
    assert not [p for p in under if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

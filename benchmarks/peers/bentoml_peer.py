"""The BentoML peer: the same model behind BentoML 1.4.40 with its adaptive batching.

BentoML batches at a batchable API's HTTP endpoint, merging the lists that requests carry; a
client that sends one input per request (our ``/inference`` body) reaches a batchable API the
way BentoML documents for that case, through a service that depends on it. So: ``Frontend``
(``POST /inference``, our body in, our response body out) calls ``ModelService.infer`` with a
list of one body; ``ModelService`` (its own process, which holds the model) merges those calls
with ``batchable=True, max_batch_size=16`` and hands each batch to ``batched_model.run_batch``.
One worker each; BentoML's defaults otherwise (its Prometheus metrics on, no tracing).

``max_latency_ms`` is not a batching window in BentoML but its load shedding: a request whose
estimated latency passes it is refused with a 503, and the window is its adaptive optimizer's.
It is set to wrk's 10 s timeout, so that BentoML answers every request, as ours does (ours
queues up to MOBILE_MM_MAX_QUEUE=4096 in the benchmark), instead of trading 503s for latency.

``runner_connection`` is set so that ``Frontend`` never recycles its client session to
``ModelService`` during a run. BentoML 1.4.40 (``_bentoml_impl/client/proxy2.py``,
``SessionManager``) replaces that session every 100 calls or 300 s by default and closes the old
one under the calls still in flight on it, which fail with ``aiohttp.ClientOSError: Can not write
request body`` and reach the client as HTTP 500s: 12 of the 16 int2 correctness requests, and a
share of every load run at c >= 8, in the benchmark run before this was set. Recycling is there
to spread connections over replicas behind a balancer; here there is one ``ModelService`` on
this machine, so there is nothing to spread, and turning it off is what a user hitting those
500s would do.

Runs in its own venv (``venvs.py``: BentoML moves OpenTelemetry packages of ``.venv``), with
``bentoml serve``; ``GET /readyz`` (BentoML's readiness, which waits for ``ModelService``) is
its ready probe.

Example::

    var/peer-venvs/bentoml/bin/python -m benchmarks.peers.bentoml_peer --quantization int2 --port 8092
"""

# No `from __future__ import annotations`: BentoML reads the API signatures' types at import.
import argparse
import os
import sys
from typing import Any

import bentoml
from benchmarks.peers.batched_model import (
    MAX_BATCH_SIZE,
    PEER_TASKS,
    BadRequest,
    load_model,
    parse_request,
    run_batch,
)
from bentoml.exceptions import InvalidArgument

MAX_LATENCY_MS = 10_000
# never within a run (a week, 2**31 - 1 calls): see the module docstring
RUNNER_CONNECTION = {"max_requests": 2**31 - 1, "max_age": 7 * 24 * 3600.0}
MODEL_ENV, QUANTIZATION_ENV = "BENCH_PEER_MODEL", "BENCH_PEER_QUANTIZATION"


@bentoml.service(workers=1, runner_connection=RUNNER_CONNECTION)
class ModelService:
    def __init__(self) -> None:
        self.model = load_model(
            os.environ.get(MODEL_ENV, "default"), os.environ.get(QUANTIZATION_ENV, "fp32")
        )

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def infer(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        try:
            requests = [parse_request(body) for body in bodies]
        except BadRequest as exc:
            raise InvalidArgument(str(exc)) from exc
        return run_batch(self.model, requests)


@bentoml.service(workers=1)
class Frontend:
    model = bentoml.depends(ModelService)

    @bentoml.api(route="/inference")
    async def inference(
        self,
        image: str,
        task: str,
        question: str | None = None,
        texts: list[str] | None = None,
        max_tokens: int | None = None,
    ) -> dict[str, Any]:
        if task not in PEER_TASKS:
            raise InvalidArgument(f"task must be one of {list(PEER_TASKS)}")
        body: dict[str, Any] = {"image": image, "task": task, "question": question, "max_tokens": max_tokens}
        results: list[dict[str, Any]] = await self.model.to_async.infer([body])
        return results[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--quantization", default="fp32")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8092)
    args = parser.parse_args(argv)
    env = {
        **os.environ,
        MODEL_ENV: args.model,
        QUANTIZATION_ENV: args.quantization,
        "BENTOML_DO_NOT_TRACK": "True",  # no usage reports from a benchmark (nor any network)
    }
    argv_serve = [sys.executable, "-m", "bentoml", "serve", f"{__spec__.name}:Frontend"]
    argv_serve += ["--host", args.host, "--port", str(args.port), "--working-dir", os.getcwd()]
    os.execve(sys.executable, argv_serve, env)  # the same process: its group is the benchmark's to stop


if __name__ == "__main__":
    main()

"""The LitServe peer: the same model behind LitServe 0.2.19 with its dynamic batching.

As LitServe's documentation writes a batched CPU API: one ``LitAPI`` whose ``predict`` takes
the batch LitServe assembled (``max_batch_size=16``, ``batch_timeout=5 ms``: the settings ours
runs with), one inference worker on the CPU, LitServe's defaults otherwise (no telemetry of its
own beyond that). ``POST /inference`` takes our body and answers our response body
(``batched_model.py``); ``GET /ready`` is LitServe's health check, 200 once the worker's
``setup`` (load and one warm-up answer) is done.

Example::

    .venv/bin/python -m benchmarks.peers.litserve_peer --model default --quantization int2 --port 8091
"""

# No `from __future__ import annotations` here: LitServe reads decode_request's annotation
# (the class fastapi.Request: the body is read as JSON) at run time.
import argparse
from typing import Any

import litserve as ls
from benchmarks.peers.batched_model import (
    MAX_BATCH_SIZE,
    BadRequest,
    PeerRequest,
    load_model,
    parse_request,
    run_batch,
)
from fastapi import HTTPException, Request

BATCH_TIMEOUT_S = 0.005


class InferenceAPI(ls.LitAPI):
    def __init__(self, model: str, quantization: str) -> None:
        super().__init__(max_batch_size=MAX_BATCH_SIZE, batch_timeout=BATCH_TIMEOUT_S, api_path="/inference")
        self.model_name, self.quantization = model, quantization

    def setup(self, device: str) -> None:
        self.model = load_model(self.model_name, self.quantization)

    def decode_request(self, request: Request) -> PeerRequest:  # type: ignore[override]
        try:
            return parse_request(request)
        except BadRequest as exc:
            raise HTTPException(422, str(exc)) from exc

    def batch(self, inputs: list[PeerRequest]) -> list[PeerRequest]:
        return list(inputs)  # mixed tasks: run_batch groups them

    def predict(self, x: list[PeerRequest]) -> list[dict[str, Any]]:
        return run_batch(self.model, x)

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


def create_server(model: str, quantization: str) -> ls.LitServer:
    return ls.LitServer(
        InferenceAPI(model, quantization),
        accelerator="cpu",
        workers_per_device=1,
        healthcheck_path="/ready",
        timeout=60,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--quantization", default="fp32")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091)
    args = parser.parse_args(argv)
    server = create_server(args.model, args.quantization)
    server.run(host=args.host, port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()

"""Issue 16, item 5: the database becomes unreachable while serving (a real PostgreSQL, stopped).

With auth required, keyed routes answer 503 ``DATABASE_UNAVAILABLE`` with ``Retry-After`` (never
a 500) and ``/health`` reports the database check failing; a server with auth disabled goes on
answering inference; when PostgreSQL is back, keys work again without a restart.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.integration.servers import scene_png_b64
from tests.postgres import PgCluster, _pg_bin

from mobile_multimodal.model import MobileMultiModalLLM

from .serve_process import MOBILE_MM, REPO, ServeProcess

pytestmark = pytest.mark.slow


class StoppablePgCluster(PgCluster):
    """The session's cluster is shared; this one is the test's own, so it can be stopped and started."""

    def stop_server(self) -> None:
        stop = self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        assert stop.returncode == 0, stop.stderr

    def start_server(self) -> None:
        opts = f"-h 127.0.0.1 -p {self.port} -k {self.root} -F"
        start = self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.root / "server.log"),
            "-w", "-t", "120", "start",
        )  # fmt: skip
        assert start.returncode == 0, start.stderr


@pytest.fixture(scope="module")
def cluster() -> Iterator[StoppablePgCluster]:
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install '.[postgres]')")
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found (scripts/install_system_deps.sh)")
    pg = StoppablePgCluster(bin_dir)
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()


def _create_key(database_url: str, data_dir: Path, *flags: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOBILE_MM_")}
    env |= {"MOBILE_MM_DATABASE_URL": database_url, "MOBILE_MM_DATA_DIR": str(data_dir)}
    done = subprocess.run(
        [str(MOBILE_MM), "keys", "create", "--user", "reliability", "--json", *flags],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["key"])


def _infer(url: str, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"image": scene_png_b64(), "task": "captioning"}
    return httpx.post(url + "/inference", json=body, headers=headers, timeout=60)


def test_an_unreachable_database_is_a_503_and_recovers(
    cluster: StoppablePgCluster, tiny_model: MobileMultiModalLLM, tmp_path: Path
) -> None:
    name = "t_" + uuid.uuid4().hex[:12]
    cluster.admin(f"CREATE DATABASE {name}")
    url = cluster.url(name)
    model_dir = tiny_model.save(tmp_path / "model")
    key = _create_key(url, tmp_path / "keys")
    admin_key = _create_key(url, tmp_path / "keys", "--admin")
    common = {"MOBILE_MM_MODEL": str(model_dir), "MOBILE_MM_DATABASE_URL": url}
    keyed = ServeProcess(tmp_path / "keyed", env=common | {"MOBILE_MM_AUTH": "required"})
    open_ = ServeProcess(tmp_path / "open", env=common | {"MOBILE_MM_AUTH": "disabled"})
    for server in (keyed, open_):
        server.workdir.mkdir()
    with keyed.start(wait_ready=False), open_.start(wait_ready=False):
        keyed.wait_ready()
        open_.wait_ready()
        assert _infer(keyed.url, key).status_code == 200
        assert _infer(keyed.url).status_code == 401

        cluster.stop_server()
        refused = _infer(keyed.url, key)
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["Retry-After"]) > 0
        body = refused.json()
        assert body["error"]["code"] == "DATABASE_UNAVAILABLE", body
        assert body["error"]["message"] and body["trace_id"]
        admin = httpx.get(keyed.url + "/export", headers={"Authorization": f"Bearer {admin_key}"}, timeout=60)
        assert admin.status_code == 503, admin.text  # the admin routes' key check too
        assert admin.json()["error"]["code"] == "DATABASE_UNAVAILABLE" and "Retry-After" in admin.headers
        health = httpx.get(keyed.url + "/health", timeout=60)
        assert health.status_code == 503
        report = health.json()
        assert report["checks"]["database"] == "unhealthy"
        assert report["checks"]["model"] == "healthy"
        assert any(
            e["component"] == "database" and e["code"] == "DATABASE_UNAVAILABLE" for e in report["errors"]
        )
        # without auth the database is not on the request path: inference goes on
        for _ in range(3):
            answer = _infer(open_.url)
            assert answer.status_code == 200, answer.text

        cluster.start_server()
        back = _infer(keyed.url, key)
        assert back.status_code == 200, back.text
        assert httpx.get(keyed.url + "/health", timeout=60).status_code == 200

"""The compose deployment and the image as a laptop runs them (issue 22), checked without a Docker
engine: docker-compose v1 resolves the files, the secrets README's commands run for real, the
Dockerfile's dependency layer is executed on our pyproject.toml, dpkg names the packages that own
the fonts the canary renders, and `make -n` shows how `make setup` picks torch's index."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mobile_multimodal.data import text_images
from mobile_multimodal.settings import Settings

from .localstack import REPO
from .test_compose import _compose, _volumes, published

LINUX_OVERRIDE = REPO / "docker-compose.linux.yml"


def _resolve(*files: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    args = [a for f in files for a in ("-f", str(f))]
    result = subprocess.run(
        ["docker-compose", *args, "--profile", "monitoring", "--profile", "gpu", "config"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, result.stderr
    return dict(yaml.safe_load(result.stdout))


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    assert _compose("config", "-q").returncode == 0
    return _resolve(REPO / "docker-compose.yml")


def _seconds(duration: str) -> float:
    """A compose duration ("45s", "1m30s") in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_compose_waits_longer_than_the_app_drains(resolved: dict[str, Any]) -> None:
    """SIGKILL after stop_grace_period; the app drains for MOBILE_MM_SHUTDOWN_GRACE_S."""
    drain = Settings.model_fields["shutdown_grace_s"].default
    assert drain == 30.0  # settings.py's default, which the image and compose do not change
    for name in ("app-prod", "app-gpu"):
        app = resolved["services"][name]
        assert "MOBILE_MM_SHUTDOWN_GRACE_S" not in app["environment"], name
        assert _seconds(app["stop_grace_period"]) >= drain + 10, name  # the drain, then the exit
    assert _seconds("1m30s") == 90 and _seconds("45s") == 45


def test_every_port_is_published_on_loopback_unless_told(resolved: dict[str, Any]) -> None:
    ports = {name: published(svc) for name, svc in resolved["services"].items()}
    assert sum(len(p) for p in ports.values()) >= 10
    for name, bound in ports.items():
        assert all(address == "127.0.0.1" for address, _ in bound), (name, bound)
    everywhere = _resolve(REPO / "docker-compose.yml", env={"BIND_ADDRESS": "0.0.0.0"})
    assert {address for svc in everywhere["services"].values() for address, _ in published(svc)} == {
        "0.0.0.0"
    }


def test_every_service_rotates_its_docker_logs(resolved: dict[str, Any]) -> None:
    for name, service in resolved["services"].items():
        logging = service.get("logging", {})
        assert logging.get("driver") == "json-file", name
        assert re.fullmatch(r"\d+[km]", logging["options"]["max-size"]), name
        assert int(logging["options"]["max-file"]) >= 1, name


def test_only_the_guides_container_has_a_fixed_name(resolved: dict[str, Any]) -> None:
    names = {n: s["container_name"] for n, s in resolved["services"].items() if "container_name" in s}
    # app-prod-postgres (profile postgres) stands in for app-prod: the same container, one or the other
    assert names == {"app-prod": "mobile-multimodal-prod", "app-prod-postgres": "mobile-multimodal-prod"}
    assert "docker stats mobile-multimodal-prod" in (REPO / "docs" / "monitoring.md").read_text()


def test_app_images_are_built_not_pulled(resolved: dict[str, Any]) -> None:
    for name in ("app-prod", "app-gpu", "app-prod-postgres"):
        assert resolved["services"][name]["pull_policy"] == "build", name


def test_promtail_keeps_its_positions_on_a_volume(resolved: dict[str, Any]) -> None:
    config = yaml.safe_load((REPO / "monitoring" / "promtail" / "promtail-config.yml").read_text())
    positions = Path(config["positions"]["filename"])
    mounts = dict((target, source) for source, target in _volumes(resolved["services"]["promtail"]))
    assert str(positions.parent) in mounts, (positions, mounts)
    assert mounts[str(positions.parent)] in resolved["volumes"]  # a named volume, not a bind mount


def test_jaeger_memory_is_bounded(resolved: dict[str, Any]) -> None:
    def max_traces(config: dict[str, Any]) -> int:
        flags = [f for f in config["services"]["jaeger"]["command"] if f.startswith("--memory.max-traces=")]
        assert len(flags) == 1
        return int(flags[0].split("=", 1)[1])

    assert 0 < max_traces(resolved) <= 100_000
    assert max_traces(_resolve(REPO / "docker-compose.yml", env={"JAEGER_MAX_TRACES": "5000"})) == 5000


def test_node_exporter_starts_without_host_mounts(resolved: dict[str, Any]) -> None:
    for name, service in resolved["services"].items():
        for volume in service.get("volumes", []):
            assert not re.search(r"r?(slave|shared)", volume.split(":", 2)[-1]), (name, volume)
    node = resolved["services"]["node-exporter"]
    assert "volumes" not in node and "pid" not in node and "network_mode" not in node
    assert node["expose"] == ["9100"] and "ports" not in node


def test_linux_override_gives_node_exporter_the_host() -> None:
    linux = _resolve(REPO / "docker-compose.yml", LINUX_OVERRIDE)
    node = linux["services"]["node-exporter"]
    assert node["network_mode"] == "host" and node["pid"] == "host"
    assert node["volumes"] == ["/:/host:ro"]
    assert "--path.rootfs=/host" in node["command"]
    listen = [f for f in node["command"] if f.startswith("--web.listen-address=")]
    assert listen == ["--web.listen-address=172.17.0.1:9100"]  # docker0, not the LAN
    assert "ports" not in node  # docker-compose >= 1.28 refuses published ports on the host network
    assert linux["services"]["prometheus"]["extra_hosts"] == {"node-exporter": "host-gateway"}
    scraped = yaml.safe_load((REPO / "monitoring" / "prometheus.yml").read_text())["scrape_configs"]
    targets = {t for job in scraped for sc in job.get("static_configs", []) for t in sc["targets"]}
    assert "node-exporter:9100" in targets


def test_reloadable_configs_are_directory_mounts(resolved: dict[str, Any]) -> None:
    for name, flag in (("prometheus", "--config.file="), ("alertmanager", "--config.file=")):
        service = resolved["services"][name]
        config = Path(next(c for c in service["command"] if c.startswith(flag)).split("=", 1)[1])
        mounts = {target: source for source, target in _volumes(service)}
        assert str(config) not in mounts, f"{name}: single-file mount of {config}"
        source = Path(mounts[str(config.parent)])
        assert source.is_dir() and (source / config.name).is_file(), name
    # Prometheus mounts monitoring/ too, but Alertmanager's receiver secrets are not its business.
    assert resolved["services"]["prometheus"]["tmpfs"] == ["/etc/prometheus/config/secrets:size=64k"]


def _secret_commands() -> list[str]:
    readme = (REPO / "monitoring" / "secrets" / "README.md").read_text()
    block = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)[0]
    lines = [line for line in block.splitlines() if line.split()[0] in ("printf", "chmod", "umask")]
    assert len(lines) == 5, lines  # three files written, the directory and the files made readable
    return lines


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may enter (pytest's tmp_path is under a 0700 directory): a bind
    mount starts at monitoring/secrets, so in the container no parent stands in the way."""
    path = Path(tempfile.mkdtemp(prefix="mm-secrets-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def test_documented_secret_commands_make_files_alertmanager_can_read(open_dir: Path) -> None:
    """Alertmanager runs as nobody: the README's commands must leave files nobody can read, even
    under `umask 077` and over files an older 0600 recipe made."""
    secrets = open_dir / "monitoring" / "secrets"
    secrets.mkdir(parents=True)
    secrets.chmod(0o700)
    (open_dir / "monitoring").chmod(0o755)
    (secrets / "smtp_password").write_text("old")
    (secrets / "smtp_password").chmod(0o600)
    script = "umask 077\n" + "\n".join(_secret_commands())
    subprocess.run(["bash", "-c", script], cwd=open_dir, check=True, timeout=60)
    names = {"pagerduty_routing_key", "slack_webhook_url", "smtp_password"}
    assert {p.name for p in secrets.iterdir()} == names
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o755
    for name in names:
        assert stat.S_IMODE((secrets / name).stat().st_mode) == 0o644, name
    assert (secrets / "smtp_password").read_text() == "YOUR-SMTP-PASSWORD"
    alertmanager_config = yaml.safe_load((REPO / "monitoring" / "alertmanager.yml").read_text())
    assert alertmanager_config["global"]["smtp_auth_password_file"].endswith("/smtp_password")
    if os.geteuid() == 0 and shutil.which("setpriv"):  # read it as nobody, as Alertmanager does
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat"]
        target = str(secrets / "smtp_password")
        result = subprocess.run([*as_nobody, target], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and result.stdout == "YOUR-SMTP-PASSWORD", result.stderr
        (secrets / "smtp_password").chmod(0o600)  # and the old recipe's mode is refused
        assert subprocess.run([*as_nobody, target], capture_output=True, timeout=30).returncode


def _dockerfile() -> str:
    return (REPO / "Dockerfile").read_text()


def test_dependencies_install_in_a_layer_before_the_source(tmp_path: Path) -> None:
    text = _dockerfile()
    assert text.index("COPY pyproject.toml README.md ./") < text.index("pip install -r /tmp/requirements.txt")
    assert text.index("pip install -r /tmp/requirements.txt") < text.index("COPY src ./src")
    assert text.index("COPY src ./src") < text.index("RUN pip install --no-deps .")
    # The layer's own command, run on our pyproject.toml: exactly the project's dependencies and
    # the postgres extra (psycopg, for MOBILE_MM_DATABASE_URL=postgresql://...).
    command = re.search(r'RUN (python -c ".*?") > /tmp/requirements.txt', text)
    assert command
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    out = subprocess.run(
        ["bash", "-c", command.group(1).replace("python ", f"{sys.executable} ", 1)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert out == project["dependencies"] + project["optional-dependencies"]["postgres"]
    assert "torch==2.13.0" in out


def test_image_strips_torch_tests_and_headers_and_names_its_group() -> None:
    text = _dockerfile()
    for part in ("torch/test", "torch/include"):
        assert f"rm -rf /opt/venv/lib/python3.11/site-packages/{part}" in text or (
            f"/opt/venv/lib/python3.11/site-packages/{part}" in text
        ), part
    assert "groupadd --system --gid 10001 app" in text and "--gid app" in text
    assert re.search(r"^USER 10001:10001$", text, flags=re.M)
    assert "**/*.egg-info" in (REPO / ".dockerignore").read_text().splitlines()


def test_image_installs_what_the_canary_renders_with() -> None:
    """The canary's OCR set needs every training font and the word list: the packages that own
    them here (dpkg) are the ones the image installs."""
    install = re.search(r"apt-get install -y --no-install-recommends \\\n(.*?)&& rm", _dockerfile(), re.S)
    assert install
    packages = set(install.group(1).replace("\\", " ").split())
    needed = [text_images.FONT_ROOT / f for f in text_images.TRAIN_FONTS]
    needed.append(text_images.WORDS_FILE.resolve())
    owners = subprocess.run(
        ["dpkg", "-S", *map(str, needed)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    owning = {line.split(":", 1)[0] for line in owners.splitlines()}
    assert owning <= packages, owning - packages
    assert "wamerican" in owning and "fonts-urw-base35" in owning


# --- make setup: which index torch comes from -------------------------------------------------


def _torch_args_command(*make_args: str) -> str:
    """The `$(...)` that picks torch's pip options, as `make -n` prints the setup recipe."""
    # Not the caller's choices: a `make TORCH_INDEX_URL=... test` passes them down in MAKEFLAGS.
    drop = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "TORCH_INDEX_URL", "TORCH_CPU_INDEX_URL"}
    printed = subprocess.run(
        ["make", "-n", "-B", ".venv/.installed", *make_args],
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if k not in drop},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    line = [ln for ln in printed.splitlines() if "torch==2.13.0" in ln and "pip install" in ln]
    assert len(line) == 1, printed
    found = re.search(r"\$\((sh scripts/torch_index_args\.sh [^)]*)\)", line[0])
    assert found, line[0]
    return found.group(1)


def _run_args(command: str, tmp_path: Path, **env: str) -> str:
    """Run it with only sh/uname/grep on the PATH (no nvidia-smi) and pip's config files off."""
    tools = tmp_path / "bin"
    tools.mkdir(exist_ok=True)
    for tool in ("sh", "uname", "grep"):
        if not (tools / tool).exists():
            (tools / tool).symlink_to(shutil.which(tool) or tool)
    clean = {"PATH": str(tools), "PIP_CONFIG_FILE": os.devnull, "HOME": str(tmp_path), **env}
    result = subprocess.run(
        ["/bin/sh", "-c", f"echo $({command})"],
        cwd=REPO,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.skipif(sys.platform != "linux", reason="the CPU index is added on Linux only")
def test_make_setup_takes_the_cpu_build_on_a_plain_linux_machine(tmp_path: Path) -> None:
    command = _torch_args_command()
    assert _run_args(command, tmp_path) == "--extra-index-url https://download.pytorch.org/whl/cpu"
    # A configured source (mirror, wheel directory, no index) is used as it is.
    for env in (
        {"PIP_INDEX_URL": "http://127.0.0.1:3141/simple"},
        {"PIP_EXTRA_INDEX_URL": "file:///opt/pypi/simple"},
        {"PIP_FIND_LINKS": "/opt/wheels"},
        {"PIP_NO_INDEX": "1"},
    ):
        assert _run_args(command, tmp_path, **env) == "", env
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = http://127.0.0.1:3141/simple\n")
    assert _run_args(command, tmp_path, PIP_CONFIG_FILE=str(conf)) == ""
    # A machine with an NVIDIA GPU keeps PyPI's CUDA build.
    (tmp_path / "bin" / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "bin" / "nvidia-smi").chmod(0o755)
    assert _run_args(command, tmp_path) == ""


def test_make_setup_torch_index_is_overridable(tmp_path: Path) -> None:
    cuda = "https://download.pytorch.org/whl/cu126"
    assert _run_args(_torch_args_command(f"TORCH_INDEX_URL={cuda}"), tmp_path) == f"--index-url {cuda}"
    assert _run_args(_torch_args_command("TORCH_INDEX_URL="), tmp_path) == ""
    mirror = "http://127.0.0.1:3141/pytorch-cpu/simple"
    assert _run_args(_torch_args_command(f"TORCH_CPU_INDEX_URL={mirror}"), tmp_path) == (
        f"--extra-index-url {mirror}" if sys.platform == "linux" else ""
    )


def test_make_setup_keeps_this_machines_pip_sources() -> None:
    """Where pip already has a source (as here: a wheel directory and local indexes, nothing
    else reachable), `make setup` adds no index pip would have to reach."""
    python = REPO / ".venv" / "bin" / "python"
    configured = subprocess.run(
        [str(python), "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    command = _torch_args_command()
    out = subprocess.run(
        ["sh", "-c", f"echo $({command})"], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    ).stdout.strip()
    has_source = re.search(r"\.(index-url|extra-index-url|find-links|no-index)=", configured)
    if has_source or shutil.which("nvidia-smi"):
        assert out == ""
    else:
        assert out == "--extra-index-url https://download.pytorch.org/whl/cpu"


# --- the commands the docs show -----------------------------------------------------------------


def _laptop_section_commands() -> list[str]:
    doc = (REPO / "docs" / "monitoring.md").read_text()
    section = doc.split("## Running the compose stack on a laptop")[1].split("\n## ")[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if "docker-compose" in line]


def test_documented_compose_commands_resolve() -> None:
    """Each `docker-compose ... up -d` of the guide's laptop section, with `config -q` in place of
    `up -d` (no engine here): the files and options it names are valid together."""
    commands = _laptop_section_commands()
    assert len(commands) == 2, commands
    for command in commands:
        assert command.endswith(" up -d"), command
        words = shlex.split(command.removesuffix(" up -d") + " config -q")
        env = dict(w.split("=", 1) for w in words if re.fullmatch(r"[A-Z_]+=.*", w))
        args = [w for w in words if not re.fullmatch(r"[A-Z_]+=.*", w)]
        result = subprocess.run(
            args, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, (command, result.stderr)


def test_readme_torch_index_commands() -> None:
    """The README's `make setup TORCH_INDEX_URL=...` overrides reach the setup recipe."""
    readme = (REPO / "README.md").read_text()
    overrides = re.findall(r"`make setup (TORCH_INDEX_URL=[^`]*)`", readme)
    assert overrides == ["TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126", "TORCH_INDEX_URL="]
    assert _torch_args_command(overrides[0]).startswith(
        "sh scripts/torch_index_args.sh 'https://download.pytorch.org/whl/cu126' "
    )
    assert _torch_args_command(overrides[1]).startswith("sh scripts/torch_index_args.sh '' ")


def _wheel(index: Path, version: str) -> None:
    """A real (tiny) wheel of the project `mm-torch-probe` in a PEP 503 index directory."""
    project = index / "mm-torch-probe"
    project.mkdir(parents=True)
    name = f"mm_torch_probe-{version}"
    with zipfile.ZipFile(project / f"{name}-py3-none-any.whl", "w") as wheel:
        wheel.writestr("mm_torch_probe/__init__.py", f"BUILD = {version!r}\n")
        wheel.writestr(
            f"{name}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: mm-torch-probe\nVersion: {version}\n"
        )
        wheel.writestr(
            f"{name}.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        wheel.writestr(f"{name}.dist-info/RECORD", "")
    (project / "index.html").write_text(f'<a href="{name}-py3-none-any.whl">{name}-py3-none-any.whl</a>\n')


def test_pip_takes_the_cpu_build_from_the_extra_index(tmp_path: Path) -> None:
    """What `auto` relies on, with the real pip: given PyPI (here a local index with `2.13.0`)
    and the CPU index (`2.13.0+cpu`) as --extra-index-url, `==2.13.0` resolves to the +cpu build."""
    pypi, cpu = tmp_path / "pypi", tmp_path / "cpu"
    _wheel(pypi, "2.13.0")
    _wheel(cpu, "2.13.0+cpu")
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--quiet",
            "--report",
            str(report),
            "--index-url",
            pypi.as_uri(),
            "--extra-index-url",
            cpu.as_uri(),
            "mm-torch-probe==2.13.0",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    chosen = [item["metadata"]["version"] for item in json.loads(report.read_text())["install"]]
    assert chosen == ["2.13.0+cpu"]

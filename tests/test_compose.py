"""docker-compose.yml, deploy/Dockerfile and deploy/prometheus.yml, checked without Docker.

Docker cannot run here, so the deployment is checked the way it would break: a command that
is not a real entry point, an environment override that names no config field, a port that
one side binds and the other does not expect, a scrape target on the wrong port, an output
directory outside the volume, a torch that is not pinned before the project.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath

import pytest

from deploy.deployment import Deployment
from deploy.deployment import load as load_deployment
from hdrstream.metrics import serve_metrics
from deploy.service import DRAIN_IDLE_S, STAGES
from hdrstream.transport import FLUSH_S

yaml = pytest.importorskip("yaml", reason="PyYAML parses docker-compose.yml (pip install pyyaml)")

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
PROMETHEUS = ROOT / "deploy" / "prometheus.yml"
TABLES = ("graph", "preprocess", "infer", "dispatch", "sink")  # Deployment attributes env may override

# Which [graph] fields each service uses: endpoints it binds or connects, its metrics port.
ENDPOINTS = {
    "capture": ("capture_out",),
    "preprocess": ("preprocess_in", "work", "dispatch_sink"),
    "infer": ("worker_in", "worker_out"),
    "sink": ("sink_in",),
}
METRICS_PORT = {stage: f"{stage}_metrics_port" for stage in STAGES}


# -- reading the files as Docker would -------------------------------------------------------

_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}|\$\$")


def interpolate(value, env: dict[str, str]):
    """Compose's ``${VAR}`` / ``${VAR:-default}`` substitution, with ``env`` as the shell's."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        got = env.get(m.group("name"))
        return got if got else (m.group("default") or "")

    return _VAR.sub(sub, value)


def load_compose(env: dict[str, str] | None = None) -> dict:
    return interpolate(yaml.safe_load(COMPOSE.read_text()), env or {})


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


def hdrstream_services(compose: dict) -> dict[str, dict]:
    return {name: svc for name, svc in compose["services"].items() if name in STAGES}


def service_env(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: str(v) for k, v in env.items() if v is not None}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    lines, joined = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.strip().startswith("#"):
            continue
        joined += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            if joined.strip():
                word, _, rest = joined.strip().partition(" ")
                lines.append((word.upper(), rest.strip()))
            joined = ""
    return lines


def entrypoint() -> list[str]:
    import json

    found = [args for word, args in dockerfile_instructions() if word == "ENTRYPOINT"]
    assert len(found) == 1, "deploy/Dockerfile needs exactly one ENTRYPOINT"
    return json.loads(found[0])


def config_path(svc: dict) -> str:
    cmd = svc["command"]
    assert "--config" in cmd, f"{cmd}: a service reads its deployment file with --config"
    return cmd[cmd.index("--config") + 1]


def bind_mounts(svc: dict) -> dict[str, tuple[str, str]]:
    """Container path -> (source, options) for each short-syntax volume."""
    out = {}
    for vol in svc.get("volumes", []):
        source, target, *opts = vol.split(":")
        out[target] = (source, opts[0] if opts else "rw")
    return out


def deployment(svc: dict) -> Deployment:
    """The deployment this container sees: its mounted config file plus its environment."""
    source, _ = bind_mounts(svc)[config_path(svc)]
    return load_deployment(ROOT / source, env=service_env(svc))


def seconds(duration: str) -> float:
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert parts and duration, f"cannot read the duration {duration!r}"
    return int(parts.group(1) or 0) * 60 + int(parts.group(2) or 0)


def bound_ports(stage: str, dep: Deployment) -> set[int]:
    """Every TCP port the service listens on inside its container."""
    g = dep.graph
    ports = {getattr(g, METRICS_PORT[stage])}
    for field in ENDPOINTS[stage]:
        value = getattr(g, field)
        if value.startswith("@"):
            ports.add(int(value.rsplit(":", 1)[1]))
    if stage == "sink" and dep.sink.web_port:
        ports.add(dep.sink.web_port)
    return ports


# -- the tests ---------------------------------------------------------------------------------


def test_the_files_parse_and_name_every_stage(compose):
    assert set(compose["services"]) == {*STAGES, "prometheus"}
    assert yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]


@pytest.mark.parametrize("stage", STAGES)
def test_command_is_a_real_entry_point_that_answers_help(compose, stage):
    svc = compose["services"][stage]
    cmd = svc["command"]
    assert cmd[:2] == ["serve", stage], f"{stage}: command {cmd} should be `serve {stage} --config FILE`"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    (exe,) = entrypoint()
    assert scripts.get(exe) == "deploy.cli:main", f"ENTRYPOINT {exe!r} is not the project's console script"
    # the image's entrypoint + the service's command, as that console script runs it
    run = subprocess.run([sys.executable, "-m", "deploy.cli", *cmd, "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "--config" in run.stdout


@pytest.mark.parametrize("stage", STAGES)
def test_environment_overrides_name_real_fields_and_load(compose, stage):
    svc = compose["services"][stage]
    env = service_env(svc)
    assert all(k.startswith("HDRSTREAM_") for k in env), f"{stage}: unexpected variables {sorted(env)}"
    dep = deployment(svc)  # unknown fields and bad values raise here
    for key, value in env.items():
        table, _, field = key.removeprefix("HDRSTREAM_").lower().partition("_")
        assert table in TABLES, f"{key}: [{table}] is not a table a service reads ({TABLES})"
        got = getattr(getattr(dep, table), field)
        assert str(got) == value, f"{key}={value!r} did not reach [{table}] {field} (got {got!r})"


def test_every_connect_reaches_a_service_that_binds_it(compose):
    deps = {stage: deployment(svc) for stage, svc in hdrstream_services(compose).items()}
    listening = {(stage, port) for stage, dep in deps.items() for port in bound_ports(stage, dep)}
    for stage, dep in deps.items():
        for field in ENDPOINTS[stage]:
            endpoint = getattr(dep.graph, field)
            m = re.fullmatch(r"([@>])tcp://([^:]+):(\d+)", endpoint)
            assert m, f"{stage}: [graph] {field} = {endpoint!r} is not @tcp://HOST:PORT or >tcp://HOST:PORT"
            kind, host, port = m.group(1), m.group(2), int(m.group(3))
            if kind == "@":
                assert host == "0.0.0.0", f"{stage}: {field} binds {host}; other containers cannot reach it"
            else:
                assert (host, port) in listening, f"{stage}: {field} connects to {host}:{port}, which no service binds"
        assert dep.graph.metrics_host == "0.0.0.0", f"{stage}: metrics must bind 0.0.0.0 for Prometheus"


def test_the_camera_moves_to_another_machine_by_one_variable():
    svc = load_compose({"HDRSTREAM_CAPTURE_ADDR": "camera-box.lan"})["services"]["preprocess"]
    assert deployment(svc).graph.preprocess_in == ">tcp://camera-box.lan:5550"


@pytest.mark.parametrize("stage", STAGES)
def test_bound_ports_are_exposed_and_published_ones_on_loopback(compose, stage):
    svc = compose["services"][stage]
    ports = bound_ports(stage, deployment(svc))
    exposed = {int(p) for p in svc.get("expose", [])}
    assert exposed == ports, f"{stage}: expose {sorted(exposed)} but the service binds {sorted(ports)}"
    for spec in svc.get("ports", []):
        container_port = str(spec).split(":")[-1]
        assert int(container_port) in ports, f"{stage}: publishes {container_port}, which it does not bind"


@pytest.mark.parametrize("name", [*STAGES, "prometheus"])
def test_published_ports_bind_loopback_unless_asked(name):
    for host, env in (("127.0.0.1", {}), ("10.1.2.3", {"HDRSTREAM_PUBLISH_HOST": "10.1.2.3"})):
        for spec in load_compose(env)["services"][name].get("ports", []):
            parts = str(spec).split(":")
            assert len(parts) == 3 and parts[0] == host, f"{name}: {spec} should publish on {host} (HOST:PORT:PORT)"


def test_sink_publishes_its_preview_and_writes_into_its_volume(compose):
    svc = compose["services"]["sink"]
    dep = deployment(svc)
    assert dep.sink.web_port and dep.sink.web_host == "0.0.0.0"
    assert any(str(p).endswith(f":{dep.sink.web_port}") for p in svc["ports"])
    out = PurePosixPath(dep.sink.out_dir)
    assert out.is_absolute(), f"sink out_dir {out} must be absolute inside the container"
    mounts = bind_mounts(svc)
    volume = [t for t in mounts if out.is_relative_to(t) and mounts[t][0] in (compose.get("volumes") or {})]
    assert volume, f"sink out_dir {out} is in no named volume ({mounts})"
    # the image makes that directory the service user's, so a new named volume is writable
    runs = " ".join(args for word, args in dockerfile_instructions() if word == "RUN")
    assert f"mkdir -p {volume[0]}" in runs and re.search(rf"chown \S+ {re.escape(volume[0])}\b", runs)


@pytest.mark.parametrize("stage", STAGES)
def test_config_file_is_mounted_read_only(compose, stage):
    svc = compose["services"][stage]
    source, opts = bind_mounts(svc)[config_path(svc)]
    assert (ROOT / source).is_file(), f"{stage} mounts {source}, which does not exist"
    assert opts == "ro"


def test_prometheus_scrapes_every_metrics_port(compose):
    prom = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"]: job for job in prom["scrape_configs"]}
    assert set(STAGES) <= set(jobs), f"jobs {sorted(jobs)} miss {sorted(set(STAGES) - set(jobs))}"
    services = hdrstream_services(compose)
    for stage, svc in services.items():
        port = getattr(deployment(svc).graph, METRICS_PORT[stage])
        job = jobs[stage]
        if stage == "infer":  # replicas: every A record of the service name
            (sd,) = job["dns_sd_configs"]
            assert sd["names"] == ["infer"] and sd["type"] == "A" and sd["port"] == port
            assert "static_configs" not in job
        else:
            targets = [t for c in job["static_configs"] for t in c["targets"]]
            assert targets == [f"{stage}:{port}"], f"job {stage} scrapes {targets}, the service serves :{port}"
    mounts = bind_mounts(compose["services"]["prometheus"])
    assert Path(mounts["/etc/prometheus/prometheus.yml"][0]).resolve() == PROMETHEUS.resolve()


@pytest.mark.parametrize("stage", STAGES)
def test_healthcheck_asks_the_metrics_endpoint(compose, stage):
    svc = compose["services"][stage]
    port = getattr(deployment(svc).graph, METRICS_PORT[stage])
    test = svc["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "python"
    assert f"http://127.0.0.1:{port}/metrics" in " ".join(test)
    # the probe itself: healthy while a metrics server answers, unhealthy once it is gone
    with serve_metrics(0) as server:
        probe = [sys.executable, *[a.replace(f":{port}/", f":{server.port}/") for a in test[2:]]]
        assert subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    assert subprocess.run(probe, capture_output=True, timeout=30).returncode != 0


def test_gpu_reservation_is_on_infer_only_and_infer_scales(compose):
    for name, svc in compose["services"].items():
        devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        if name == "infer":
            assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
        else:
            assert not devices, f"{name} reserves a GPU"
    infer = compose["services"]["infer"]
    assert "container_name" not in infer and "ports" not in infer, "infer must scale: no fixed name or host port"


def test_capture_passes_the_usb_bus_through(compose):
    capture = compose["services"]["capture"]
    assert "/dev/bus/usb:/dev/bus/usb" in capture["devices"]
    assert "c 189:* rmw" in capture["device_cgroup_rules"]
    assert "/dev/bus/usb" in bind_mounts(capture), "bind-mount the bus so a re-plugged camera appears"


def test_services_start_downstream_first_and_stop_after_draining(compose):
    services = hdrstream_services(compose)
    after = {name: set(svc.get("depends_on", {})) for name, svc in services.items()}
    assert after == {"capture": {"preprocess"}, "preprocess": {"sink", "infer"}, "infer": {"sink"}, "sink": set()}
    grace = deployment(services["sink"]).graph.sink_grace_s
    for name, svc in services.items():
        need = DRAIN_IDLE_S + FLUSH_S + (grace if name == "sink" else 0.0)
        assert seconds(svc["stop_grace_period"]) > need, f"{name}: stop_grace_period under its {need} s drain"


def test_dockerfile_pins_torch_before_the_project():
    steps = dockerfile_instructions()
    assert steps[0] == ("FROM", "python:3.11-slim")
    args = dict(a.split("=", 1) for w, a in steps if w == "ARG" and "=" in a)
    makefile = re.search(r"^TORCH_VERSION \?= (\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert args["TORCH_VERSION"] == makefile, "the image and the Makefile must pin the same torch"
    runs = [i for i, (w, a) in enumerate(steps) if w == "RUN"]
    torch = [i for i in runs if '"torch==${TORCH_VERSION}" --index-url' in steps[i][1]]
    project = [i for i in runs if re.search(r"pip install (--no-deps )?-e \.", steps[i][1])]
    assert torch and project and torch[0] < project[0], "pinned torch must be installed before the project"
    deps = [i for i in runs if "-r /tmp/requirements.txt" in steps[i][1]]
    assert deps and torch[0] < deps[0] < project[0] and "torch==${TORCH_VERSION}" in steps[deps[0]][1]
    user = [a for w, a in steps if w == "USER"]
    assert user and user[-1] not in ("root", "0"), "the image runs as an unprivileged user"
    assert "TORCH_INDEX_URL" in args, "infer's build arg needs an ARG in the Dockerfile"


def test_dockerfile_copies_every_package_and_nothing_ignored(compose):
    steps = dockerfile_instructions()
    copied = [a.split()[0] for w, a in steps if w == "COPY"]
    includes = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()
                and any(fnmatch(p.name, pat) for pat in includes)}
    assert packages <= set(copied), f"deploy/Dockerfile does not copy {sorted(packages - set(copied))}"
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert {".venv", "out", ".git"} <= set(ignored)
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: no such path"
        assert not any(fnmatch(source, pat) for pat in ignored), f"COPY {source} but .dockerignore drops it"
    for name, svc in compose["services"].items():
        if "build" in svc:
            assert (ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() == DOCKERFILE
            assert set(svc["build"].get("args", {})) <= {a.split("=")[0] for w, a in steps if w == "ARG"}
    assert shlex.split(compose["services"]["infer"]["build"]["args"]["TORCH_INDEX_URL"])

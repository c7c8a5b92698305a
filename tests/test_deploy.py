"""What can be checked of the container, compose and Kubernetes paths on a machine without a Docker engine.

* the Dockerfile passes hadolint; its base image is a pinned tritonserver release; every package it installs
  is constrained by requirements.lock, and its own pins equal the lock's;
* the compose files validate against the Compose specification's JSON schema (vendored in deploy/schemas/)
  and publish on loopback, with health checks on the real readiness endpoints;
* the Kubernetes manifests validate against Kubernetes' schemas (kubernetes-validate, strict);
* the entrypoint's exact command line, run here, serves the default model with the wheel's tritonserver;
* tritonserver discovery: --tritonserver, then PATH (a container-like installation with its own Python
  backend, really started), then the wheel; the stub's Python must be ours;
* progress: every Triton model's loading shows its name, seconds and READY, or FAILED with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from python_backend_models import server as S

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
COMPOSE_FILES = [ROOT / "docker" / "compose.yaml", ROOT / "docker" / "compose.gpu.yaml"]
KUBERNETES = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
KSERVE = ROOT / "deploy" / "kserve" / "inferenceservice.yaml"
BIN = Path(sys.executable).parent
DEFAULT_MODELS = ["sentence-transformers--all-MiniLM-L6-v2", "sentence-transformers--all-MiniLM-L6-v2__encoder",
                  "sentence-transformers--all-MiniLM-L6-v2__preprocess", "sentence-transformers--all-MiniLM-L6-v2__score",
                  "trilate__cosine", "trilate__maxsim", "trilate__m3_score"]


def lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonical(name)] = version
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dockerfile_runs() -> list[str]:
    """The Dockerfile's RUN instructions, continuation lines joined."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    return [line[4:] for line in text.splitlines() if line.startswith("RUN ")]


# --------------------------------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint():
    out = subprocess.run([str(BIN / "hadolint"), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout == "", out.stdout + out.stderr


def test_base_image_is_a_pinned_tritonserver_release_with_python_312():
    (base,) = re.findall(r"^FROM (\S+)", DOCKERFILE.read_text(), re.M)
    m = re.fullmatch(r"nvcr\.io/nvidia/tritonserver:(\d\d)\.(\d\d)-py3", base)
    assert m, base
    # 24.12 is on Ubuntu 24.04 / Python 3.12; 24.10 has Python 3.10, and the lock needs Python >= 3.11.
    assert (int(m[1]), int(m[2])) >= (24, 12)


def test_every_pip_install_in_the_image_is_constrained_by_the_lock_and_its_pins_equal_the_lock():
    pins = lock()
    installs = [run for run in dockerfile_runs() if "pip" in run and " install " in run]
    assert installs
    for run in installs:
        for command in re.split(r"&&", run):
            if re.search(r"\bpip\b.*\binstall\b", command):
                assert "-c requirements.lock" in command, command
                for name, version in re.findall(r'"([A-Za-z0-9_.\-\[\]]+)==([^"]+)"', command):
                    assert pins[canonical(name.split("[")[0])] == version, (name, version)
    assert re.search(r"^COPY requirements\.lock ", DOCKERFILE.read_text(), re.M)


def test_the_projects_own_pins_equal_the_lock():
    """`pip install -c requirements.lock .` in the image installs pyproject's dependencies: same versions."""
    import tomllib

    pins = lock()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"] + project["optional-dependencies"]["test"]:
        name, version = requirement.split("==")
        assert pins[canonical(name.split("[")[0])] == version, requirement


def test_the_build_context_leaves_out_the_local_environment():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", ".trilate-cache", "model_repository"} <= set(ignored)
    copied = re.findall(r"^COPY (\S+)", DOCKERFILE.read_text(), re.M)
    assert not set(copied) & set(ignored)


def test_image_runs_as_a_non_root_user_with_the_same_trilate_serve_entrypoint():
    text = DOCKERFILE.read_text()
    (user,) = re.findall(r"^USER (\S+)", text, re.M)
    assert user not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["trilate-entrypoint"\]', text, re.M)
    assert "exec trilate serve" in ENTRYPOINT.read_text()
    # The manifests run the image as that same user.
    for doc in k8s_documents():
        if doc["kind"] == "Deployment":
            assert str(doc["spec"]["template"]["spec"]["securityContext"]["runAsUser"]) == user


# --------------------------------------------------------------------------------------------------
# Compose
# --------------------------------------------------------------------------------------------------


def compose_validator():
    """The Compose specification's schema; it names draft 2019-09 by an ``http://`` id jsonschema does not list."""
    import jsonschema

    schema = json.loads((ROOT / "deploy" / "schemas" / "compose-spec.json").read_text())
    assert "2019-09" in schema["$schema"]
    jsonschema.Draft201909Validator.check_schema(schema)
    return jsonschema.Draft201909Validator(schema)


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_file_validates_against_the_compose_specification(path):
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in compose_validator().iter_errors(
        yaml.safe_load(path.read_text()))]
    assert errors == []


def test_compose_schema_catches_a_misspelt_field():
    """The schema check can fail: an unknown service field is refused."""
    compose = yaml.safe_load(COMPOSE_FILES[0].read_text())
    compose["services"]["triton"]["shm_sise"] = "2gb"
    assert list(compose_validator().iter_errors(compose))


def size_bytes(text: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kmg]?)b?", text.lower()).groups()
    return int(number) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[unit]


def test_compose_services_publish_on_loopback_and_check_the_real_readiness_endpoints():
    services = yaml.safe_load(COMPOSE_FILES[0].read_text())["services"]
    assert set(services) == {"triton", "frontend"}
    for service in services.values():
        for port in service["ports"]:
            assert port.startswith("127.0.0.1:"), port
    assert "/v2/health/ready" in " ".join(services["triton"]["healthcheck"]["test"])
    assert ":8000/health" in " ".join(services["frontend"]["healthcheck"]["test"])
    assert services["frontend"]["depends_on"]["triton"]["condition"] == "service_healthy"
    assert "--no-frontend" in services["triton"]["command"]
    assert "triton:8011" in services["frontend"]["command"]
    assert size_bytes(services["triton"]["shm_size"]) >= 2**30
    assert "model-cache:/cache" in services["triton"]["volumes"]
    gpu = yaml.safe_load(COMPOSE_FILES[1].read_text())["services"]["triton"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


# --------------------------------------------------------------------------------------------------
# Kubernetes and KServe
# --------------------------------------------------------------------------------------------------


def k8s_documents() -> list[dict]:
    return [doc for path in KUBERNETES for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize("version", ["1.30", "1.37"])
def test_kubernetes_manifests_validate_against_the_kubernetes_schemas(version):
    import kubernetes_validate

    docs = k8s_documents()
    assert {d["kind"] for d in docs} == {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_kubernetes_validation_catches_a_misspelt_field():
    import kubernetes_validate

    deployment = next(d for d in k8s_documents() if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.37", strict=True)


def by_name(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in k8s_documents() if d["kind"] == kind}


def test_services_select_their_pods_and_probes_use_the_truthful_endpoints():
    deployments, services = by_name("Deployment"), by_name("Service")
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert services["trilate-triton"]["spec"]["selector"] == \
        deployments["trilate-triton"]["spec"]["template"]["metadata"]["labels"]
    assert services["trilate"]["spec"]["selector"] == \
        deployments["trilate-frontend"]["spec"]["template"]["metadata"]["labels"]
    (triton,) = deployments["trilate-triton"]["spec"]["template"]["spec"]["containers"]
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert triton["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert "--no-frontend" in triton["args"]
    volumes = {v["name"]: v for v in deployments["trilate-triton"]["spec"]["template"]["spec"]["volumes"]}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in triton["volumeMounts"]
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    (front,) = deployments["trilate-frontend"]["spec"]["template"]["spec"]["containers"]
    assert front["readinessProbe"]["httpGet"]["path"] == "/health"
    assert "trilate-triton:8010" in front["args"]


def test_autoscaler_scales_triton_on_its_queue_time_metric():
    (hpa,) = by_name("HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"]["name"] in by_name("Deployment")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "trilate-triton"
    (metric,) = hpa["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    rules = yaml.safe_load(by_name("ConfigMap")["trilate-prometheus-adapter-rules"]["data"]["config.yaml"])["rules"]
    (rule,) = [r for r in rules if r["name"]["as"] == name]
    # Triton's metric names, as tritonserver's /metrics spells them.
    assert "nv_inference_queue_duration_us" in rule["metricsQuery"]
    assert "nv_inference_request_success" in rule["metricsQuery"]


def test_kserve_inference_service_runs_the_image_as_a_valid_pod():
    import kubernetes_validate

    service = yaml.safe_load(KSERVE.read_text())
    assert (service["apiVersion"], service["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    predictor = service["spec"]["predictor"]
    # KServe has no schema in kubernetes-validate: its predictor's pod part is checked as a core Pod.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"},
           "spec": {"containers": predictor["containers"], "volumes": predictor["volumes"]}}
    kubernetes_validate.validate(pod, "1.37", strict=True)
    (container,) = predictor["containers"]
    assert container["ports"][0]["containerPort"] == 8080 and "--http-port" in container["args"]


# --------------------------------------------------------------------------------------------------
# Which tritonserver
# --------------------------------------------------------------------------------------------------

WHEEL_ROOT = S._pytriton_root()
OUR_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def test_stub_python_version_reads_each_wheel_stub():
    stubs = sorted((WHEEL_ROOT / "python_backend_stubs").iterdir())
    assert len(stubs) >= 4
    for folder in stubs:
        assert S.stub_python_version(folder / "triton_python_backend_stub") == folder.name


def container_like(prefix: Path, stub_python: str = OUR_PYTHON) -> Path:
    """``prefix`` laid out like /opt/tritonserver in NVIDIA's container, from the wheel's files:
    bin/tritonserver (a copy, so it is not the wheel's), lib/ (its libraries), backends/python/ (the
    backend with one stub)."""
    (prefix / "bin").mkdir(parents=True)
    shutil.copy2(WHEEL_ROOT / "bin" / "tritonserver", prefix / "bin" / "tritonserver")
    (prefix / "lib").symlink_to(WHEEL_ROOT.parent.parent / "nvidia_pytriton.libs")
    python = prefix / "backends" / "python"
    python.mkdir(parents=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(WHEEL_ROOT / "backends" / "python" / name, python / name)
    shutil.copy2(WHEEL_ROOT / "python_backend_stubs" / stub_python / "triton_python_backend_stub",
                 python / "triton_python_backend_stub")
    return prefix / "bin" / "tritonserver"


def test_without_tritonserver_on_path_the_wheel_is_used(monkeypatch):
    monkeypatch.setenv("PATH", str(BIN))
    found = S.find_tritonserver()
    assert found.source == S.WHEEL and found.binary == (WHEEL_ROOT / "bin" / "tritonserver").resolve()


def test_tritonserver_on_path_is_used_with_its_own_backends_and_explicit_wins(monkeypatch, tmp_path):
    on_path = container_like(tmp_path / "opt" / "tritonserver")
    monkeypatch.setenv("PATH", f"{on_path.parent}{os.pathsep}{BIN}")
    found = S.find_tritonserver()
    assert (found.binary, found.source) == (on_path, "PATH")
    assert found.backend_directory == tmp_path / "opt" / "tritonserver" / "backends"
    assert S.ServerConfig(tmp_path).command(found)[0] == str(on_path)
    explicit = S.find_tritonserver(WHEEL_ROOT / "bin" / "tritonserver")
    assert explicit.binary == (WHEEL_ROOT / "bin" / "tritonserver").resolve()
    with pytest.raises(S.ServerError, match="no executable file"):
        S.find_tritonserver(tmp_path / "nope")


def test_a_stub_built_for_another_python_is_refused_with_the_fix(monkeypatch, tmp_path):
    other = "3.10" if OUR_PYTHON != "3.10" else "3.12"
    binary = container_like(tmp_path / "t", stub_python=other)
    with pytest.raises(S.ServerError, match=rf"embeds Python {other}, but trilate runs on Python {OUR_PYTHON}"):
        S.find_tritonserver(binary)
    (tmp_path / "t" / "backends" / "python" / "triton_python_backend_stub").unlink()
    with pytest.raises(S.ServerError, match="has no Python backend"):
        S.find_tritonserver(binary)


def test_serve_reports_a_bad_tritonserver_before_loading_anything(tmp_path):
    out = subprocess.run([str(BIN / "trilate"), "serve", "--tritonserver", str(tmp_path / "nope"), "--no-frontend",
                          "--model-repository", str(tmp_path / "repo")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "--tritonserver" in out.stderr and "no executable file" in out.stderr
    assert not (tmp_path / "repo").exists()


# --------------------------------------------------------------------------------------------------
# Progress a person can see
# --------------------------------------------------------------------------------------------------

TRITON_LINES = [  # as tritonserver 2.51 writes them
    'I1201 09:05:14.844473 10433 model_lifecycle.cc:472] "loading: m__encoder:1"\n',
    'I1201 09:05:14.844636 10433 model_lifecycle.cc:472] "loading: trilate__cosine:1"\n',
    "I1201 09:05:17.803151 10433 model_lifecycle.cc:839] \"successfully loaded 'trilate__cosine'\"\n",
    "E1201 09:05:31.468235 10433 model_lifecycle.cc:642] \"failed to load 'm__encoder' version 1: "
    "Internal: ValueError: no \\\"model.safetensors\\\"\\nin folder\"\n",
]


def test_load_progress_names_each_model_with_its_seconds_and_state():
    clock = iter([0.0, 1.0, 2.0, 4.5, 9.0])
    seen = []
    progress = S.LoadProgress(seen.append, clock=lambda: next(clock))
    for line in TRITON_LINES:
        progress.feed(line)
    assert seen == ["loading m__encoder", "loading trilate__cosine", "trilate__cosine READY after 2.5 s",
                    'm__encoder FAILED after 8.0 s: Internal: ValueError: no "model.safetensors" in folder']
    assert progress.failed == {"m__encoder": 'Internal: ValueError: no "model.safetensors" in folder'}


def test_load_progress_says_which_runtime_each_encoder_runs_its_backbone_on():
    seen = []
    progress = S.LoadProgress(seen.append)
    progress.feed('I1201 15:24:26.421650 21305 encoder.py:63] "m__encoder: backbone on onnx"\n')
    progress.feed('I1201 15:24:27.421650 21305 encoder.py:63] "n__encoder: backbone on torch (ONNX Runtime not used: '
                  'export failed)"\n')
    progress.feed('I1201 15:24:27.421823 21305 encoder.py:71] "m__encoder: warm-up forward pass in 0.0 s"\n')
    assert seen == ["m__encoder: backbone on onnx", "n__encoder: backbone on torch (ONNX Runtime not used: export failed)"]


def test_models_still_loading_are_named_with_their_seconds_so_far():
    clock = iter([0.0, 1.0, 2.0, 31.0])
    seen = []
    progress = S.LoadProgress(seen.append, clock=lambda: next(clock))
    progress.feed(TRITON_LINES[0])
    progress.feed(TRITON_LINES[1])
    progress.report_still_loading()
    assert seen[-1] == "still loading: m__encoder (30 s), trilate__cosine (29 s)"


@pytest.mark.server
def test_a_model_that_fails_to_load_is_named_with_its_reason(tmp_path, stanford_colbert):
    from python_backend_models.repository import ServeSpec, build_repository
    from trilate.launch import free_ports

    checkpoint = tmp_path / "colbert"
    shutil.copytree(stanford_colbert, checkpoint)
    build_repository([ServeSpec(model=str(checkpoint), served_name="tiny/broken")], tmp_path / "repo")
    for weights in checkpoint.glob("*.safetensors"):
        weights.unlink()  # the encoder's initialize now fails
    http, grpc, metrics = free_ports(3)
    server = S.TritonServer(S.ServerConfig(tmp_path / "repo", http_port=http, grpc_port=grpc, metrics_port=metrics),
                            log_file=tmp_path / "tritonserver.log")
    seen = []
    with pytest.raises(S.ServerError) as failure:
        server.start(timeout=300, progress=seen.append)
    server.stop()
    assert "tiny--broken__encoder failed:" in str(failure.value)
    assert any(re.fullmatch(r"tiny--broken__encoder FAILED after \d+\.\d s: .*safetensors.*", s) for s in seen), seen
    assert any(re.fullmatch(r"trilate__maxsim READY after \d+\.\d s", s) for s in seen), seen


# --------------------------------------------------------------------------------------------------
# The entrypoint, run here
# --------------------------------------------------------------------------------------------------


@pytest.mark.server
def test_entrypoint_command_line_serves_the_default_model_with_the_wheels_tritonserver(tmp_path):
    """docker/entrypoint.sh as the container runs it, with the CPU image's TRILATE_DEVICE; PATH has no
    tritonserver here, so the wheel's is found (in the image, the container's is on PATH)."""
    import httpx
    from trilate import TrilateClient
    from trilate.launch import ServeProcess

    env = {"TRILATE_DEVICE": "cpu", "TRILATE_MODEL_REPOSITORY": str(tmp_path / "repo"),
           "PATH": os.pathsep.join([str(BIN), "/usr/bin", "/bin"])}
    served = ServeProcess([], command=["bash", str(ENTRYPOINT)], env=env, timeout=300)
    try:
        text = "".join(served.lines)
        assert f"tritonserver {(WHEEL_ROOT / 'bin' / 'tritonserver').resolve()} (from the nvidia-pytriton wheel)" in text
        for model in DEFAULT_MODELS:
            assert re.search(rf"trilate: {re.escape(model)} READY after \d+\.\d s", text), model
        reply = httpx.post(f"{served.rest_url}/v1/embeddings", json={"input": "What is machine learning?"}, timeout=60)
        assert reply.status_code == 200
        assert abs(reply.json()["data"][0]["embedding"][0] - (-0.0199545)) < 1e-6
        vec = TrilateClient(served.grpc_url, protocol="grpc").embed(None, "What is machine learning?").matrix()[0]
        assert abs(vec[0] - (-0.0199545)) < 1e-6
    finally:
        code = served.stop()
    assert code == 0


@pytest.mark.server
def test_quiet_serve_with_a_container_like_tritonserver_on_path(tmp_path, stanford_colbert):
    """The PATH case really started: the copy in a container-like prefix runs with that prefix's Python
    backend; with -q only the ready line is printed."""
    import psutil
    from trilate import TrilateClient
    from trilate.launch import ServeProcess

    binary = container_like(tmp_path / "opt" / "tritonserver")
    env = {"PATH": os.pathsep.join([str(binary.parent), str(BIN), "/usr/bin", "/bin"])}
    served = ServeProcess([str(stanford_colbert), "--served-model-name", "tiny/colbert", "-q", "--no-frontend",
                           "--model-repository", str(tmp_path / "repo")], env=env, timeout=300)
    try:
        servers = [p for p in psutil.Process(served.proc.pid).children(recursive=True) if p.name() == "tritonserver"]
        assert [p.exe() for p in servers] == [str(binary)]
        assert f"--backend-directory={tmp_path / 'opt' / 'tritonserver' / 'backends'}" in servers[0].cmdline()
        vectors = TrilateClient(served.grpc_url, protocol="grpc").token_embed("tiny/colbert", "hello world")
        assert vectors[0].shape[1] == 16
        trilate_lines = [line for line in served.lines if line.startswith("trilate:")]
        assert len(trilate_lines) == 1 and trilate_lines[0].startswith("trilate: ready"), trilate_lines
    finally:
        code = served.stop()
    assert code == 0


def test_quiet_turns_off_huggingface_hubs_download_bars():
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from trilate import cli

    args = cli.argparse.Namespace(quiet=False)
    cli._progress_setup(args)
    assert not are_progress_bars_disabled() or os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
    try:
        cli._progress_setup(cli.argparse.Namespace(quiet=True))
        assert are_progress_bars_disabled()
    finally:
        enable_progress_bars()

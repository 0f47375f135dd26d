"""serve/deploy/ (Kubernetes and KServe manifests), Dockerfile, Dockerfile.cuda and .dockerignore, checked offline.

- `kubectl kustomize` renders both kustomizations (kubectl is required: CI machines have it, so a missing one
  FAILS here rather than skipping);
- every rendered core object passes `kubernetes-validate --strict` against the Kubernetes OpenAPI schemas;
- the KServe objects carry the fields KServe's CRDs and controller require (our own small check, sources cited);
- the manifests agree with the server: probe services, `edgecnn serve` flags, drain timing, metric names.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from edgecnn.serve import cli as serve_cli
from edgecnn.serve import server as serve_server
from edgecnn.serve.settings import ServeSettings
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "serve" / "deploy"
K8S = DEPLOY / "k8s"
KSERVE = DEPLOY / "kserve"

# Kubernetes versions the core objects are validated against: 1.27 is the oldest with GA native gRPC probes
# (our probes need them); the newest is the newest schema the installed kubernetes-validate ships.
OLDEST_K8S = "1.27.0"

# Kinds that are CustomResourceDefinitions' objects, not core Kubernetes: no OpenAPI schema in kubernetes-validate.
KSERVE_KINDS = {"ClusterServingRuntime", "InferenceService"}

# Required fields of our KServe objects, as dotted paths ("[]" = every item of a list; "[name=value]" = the item
# whose `name` is value). Sources, KServe master (kserve/kserve, 2026-08, the v0.16+ API):
# - config/crd/full/serving.kserve.io_clusterservingruntimes.yaml (v1alpha1 openAPIV3Schema):
#   spec.required = [containers]; containers[].required = [name]; supportedModelFormats[].required = [name];
#   containers[].ports[].required = [containerPort].
# - config/crd/full/serving.kserve.io_inferenceservices.yaml (v1beta1 openAPIV3Schema):
#   spec.required = [predictor]; predictor.model.modelFormat.required = [name].
# - What the controller needs beyond the schema (pkg/controller/v1beta1/inferenceservice/components/predictor.go
#   reconcileModel; pkg/apis/serving/v1beta1/predictor_model.go GetProtocol; pkg/constants/constants.go):
#   the runtime's container is named "kserve-container" (InferenceServiceContainerName) so the model spec merges
#   into it; a model without protocolVersion is "v1", which a grpc-v2-only runtime rejects ("Specified runtime
#   does not support specified protocol version"); storageUri is where the model comes from; `runtime` names ours.
KSERVE_REQUIRED: dict[str, list[str]] = {
    "ClusterServingRuntime": [
        "apiVersion",  # serving.kserve.io/v1alpha1
        "metadata.name",
        "spec.containers",
        "spec.containers[].name",
        "spec.containers[].image",
        "spec.containers[].args",
        "spec.containers[].ports[].containerPort",
        "spec.supportedModelFormats",
        "spec.supportedModelFormats[].name",
        "spec.protocolVersions",
    ],
    "InferenceService": [
        "apiVersion",  # serving.kserve.io/v1beta1
        "metadata.name",
        "spec.predictor",
        "spec.predictor.model.modelFormat.name",
        "spec.predictor.model.runtime",
        "spec.predictor.model.protocolVersion",
        "spec.predictor.model.storageUri",
    ],
}
KSERVE_API_VERSIONS = {
    "ClusterServingRuntime": "serving.kserve.io/v1alpha1",
    "InferenceService": "serving.kserve.io/v1beta1",
}
# pkg/constants/constants.go: InferenceServiceProtocol values, and DeploymentModeType (Standard since v0.16;
# RawDeployment its deprecated alias; Serverless/Knative need Knative, which we do not use).
KSERVE_PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}
KSERVE_PLAIN_DEPLOYMENT_MODES = {"Standard", "RawDeployment"}


# --- rendering -------------------------------------------------------------------------------------------------


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail(
            "kubectl is not on PATH: these tests render serve/deploy/ with `kubectl kustomize` (kustomize is built "
            "into kubectl >= 1.24). Install kubectl; CI machines have it.",
            pytrace=False,
        )
    return path


@cache
def _render(folder: Path) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {folder.relative_to(ROOT)} failed:\n{result.stderr}"
    return tuple(obj for obj in yaml.safe_load_all(result.stdout) if obj)


def render(folder: Path) -> list[dict[str, Any]]:
    return list(_render(folder))


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def deployment() -> dict[str, Any]:
    return one(render(K8S), "Deployment")


def runtime() -> dict[str, Any]:
    return one(render(KSERVE), "ClusterServingRuntime")


def inference_service() -> dict[str, Any]:
    return one(render(KSERVE), "InferenceService")


def serving_containers() -> list[tuple[str, dict[str, Any]]]:
    """The `edgecnn serve` container of the Deployment and of the ClusterServingRuntime."""
    return [
        ("k8s Deployment", deployment()["spec"]["template"]["spec"]["containers"][0]),
        ("KServe ClusterServingRuntime", runtime()["spec"]["containers"][0]),
    ]


# --- `edgecnn serve` argument parsing ----------------------------------------------------------------------------


def parse_serve_args(args: list[str], monkeypatch: pytest.MonkeyPatch) -> ServeSettings:
    """The ServeSettings `edgecnn serve ARGS` would run with: the real typer command parses and validates them;
    only server.run is replaced, so nothing starts."""
    seen: list[ServeSettings] = []

    def fake_run(settings: ServeSettings) -> int:
        seen.append(settings)
        return 0

    monkeypatch.setattr(serve_server, "run", fake_run)
    result = CliRunner().invoke(serve_cli.app, args)
    assert result.exit_code == 0 and seen, (
        f"`edgecnn {shlex.join(args)}` does not parse as edgecnn serve flags:\n{result.output}{result.exception or ''}"
    )
    return seen[0]


def container_settings(container: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> ServeSettings:
    # The image's ENTRYPOINT is `edgecnn` (Dockerfile); Kubernetes `args` replace its CMD.
    assert not container.get("command"), "the image's ENTRYPOINT (edgecnn) should stay; put flags in args"
    args = container["args"]
    assert args[:2] == ["serve", "/mnt/models"], args
    return parse_serve_args(args, monkeypatch)


def flags_in(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if a.startswith("--")]


# --- 1. rendering --------------------------------------------------------------------------------------------------


def test_kubectl_is_installed():
    kubectl()


@pytest.mark.parametrize(
    ("folder", "kinds"),
    [
        (K8S, {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}),
        (KSERVE, {"ClusterServingRuntime", "InferenceService"}),
    ],
    ids=["k8s", "kserve"],
)
def test_kustomize_renders(folder, kinds):
    objects = render(folder)
    assert {o["kind"] for o in objects} == kinds
    images = [c["image"] for o in objects for c in _containers(o)]
    assert images and all(i != "edgecnn" and ":" in i for i in images), f"images: not rewritten by `images:`: {images}"


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec", {})
    return spec.get("template", {}).get("spec", {}).get("containers", []) or spec.get("containers", [])


# --- 2. core objects against the Kubernetes OpenAPI schemas ---------------------------------------------------------


def _kubernetes_validate():
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail(
            "kubernetes-validate is not installed: `pip install -e '.[dev]'` (or `pip install kubernetes-validate`)",
            pytrace=False,
        )
    return kubernetes_validate


def core_objects() -> list[dict[str, Any]]:
    rendered = render(K8S) + render(KSERVE)
    examples = [yaml.safe_load((K8S / "models-pvc.example.yaml").read_text())]
    return [o for o in rendered + examples if o["kind"] not in KSERVE_KINDS]


def _newest_k8s() -> str:
    return _kubernetes_validate().latest_version()


@pytest.mark.parametrize("version", [OLDEST_K8S, "newest"])
def test_core_objects_pass_kubernetes_validate_strict(version):
    kv = _kubernetes_validate()
    version = _newest_k8s() if version == "newest" else version
    objects = core_objects()
    assert {o["kind"] for o in objects} >= {
        "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "PersistentVolumeClaim",
    }
    errors = []
    for obj in objects:
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as exc:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert not errors, f"against Kubernetes {version}:\n" + "\n".join(errors)


# --- 3. KServe objects against KServe's CRDs -----------------------------------------------------------------------


def missing_paths(obj: Any, path: str) -> list[str]:
    """The concrete paths under ``path`` that are absent or empty in ``obj`` (``[]``: every list item)."""
    head, _, rest = path.partition(".")
    if head.endswith("[]"):
        items = obj.get(head[:-2]) if isinstance(obj, dict) else None
        if not isinstance(items, list) or not items:
            return [head[:-2]]
        if not rest:
            return []
        return [f"{head[:-2]}[{i}].{m}" for i, item in enumerate(items) for m in missing_paths(item, rest)]
    value = obj.get(head) if isinstance(obj, dict) else None
    if value is None or value == "" or value == [] or value == {}:
        return [head]
    return [f"{head}.{m}" for m in missing_paths(value, rest)] if rest else []


def test_missing_paths_finds_what_is_absent():
    obj = {"spec": {"containers": [{"name": "a"}, {"image": "x"}], "empty": []}}
    assert missing_paths(obj, "spec.containers[].name") == ["spec.containers[1].name"]
    assert missing_paths(obj, "spec.empty") == ["spec.empty"]
    assert missing_paths(obj, "spec.volumes[].name") == ["spec.volumes"]
    assert missing_paths(obj, "spec.containers") == []


@pytest.mark.parametrize("kind", sorted(KSERVE_REQUIRED))
def test_kserve_objects_have_the_fields_kserve_requires(kind):
    obj = one(render(KSERVE), kind)
    assert obj["apiVersion"] == KSERVE_API_VERSIONS[kind]
    missing = [m for path in KSERVE_REQUIRED[kind] for m in missing_paths(obj, path)]
    assert not missing, f"{kind} lacks {missing}"


def test_kserve_inference_service_selects_our_runtime():
    rt, isvc = runtime(), inference_service()
    spec, model = rt["spec"], inference_service()["spec"]["predictor"]["model"]
    assert model["runtime"] == rt["metadata"]["name"]
    assert model["modelFormat"]["name"] == "onnx"
    assert model["modelFormat"]["name"] in {f["name"] for f in spec["supportedModelFormats"]}
    assert set(spec["protocolVersions"]) <= KSERVE_PROTOCOLS
    assert spec["protocolVersions"] == ["grpc-v2"]  # we serve the Open Inference Protocol over gRPC only
    assert model["protocolVersion"] in spec["protocolVersions"]
    assert not spec.get("disabled")
    assert re.fullmatch(r"pvc://edgecnn-models/?", model["storageUri"])
    annotations = isvc["metadata"].get("annotations", {})
    assert annotations.get("serving.kserve.io/deploymentMode") in KSERVE_PLAIN_DEPLOYMENT_MODES
    container = spec["containers"][0]
    assert container["name"] == "kserve-container"
    # KServe's Service exposes the FIRST container port; its name containing h2c/grpc marks it HTTP/2.
    first = container["ports"][0]
    assert first == {"containerPort": 8001, "name": "h2c", "protocol": "TCP"}


# --- the manifests agree with the server ---------------------------------------------------------------------------


@pytest.mark.parametrize("which", [0, 1], ids=["k8s", "kserve"])
def test_container_args_are_edgecnn_serve_flags(which, monkeypatch):
    name, container = serving_containers()[which]
    settings = container_settings(container, monkeypatch)
    # Every flag also appears in `edgecnn serve --help` (the docs a reader checks them against).
    help_text = CliRunner().invoke(serve_cli.app, ["serve", "--help"], terminal_width=200, env={"COLUMNS": "200"})
    assert help_text.exit_code == 0
    plain = re.sub(r"\x1b\[[0-9;]*m", "", help_text.output)
    for flag in flags_in(container["args"]):
        assert flag in plain, f"{name}: {flag} not in `edgecnn serve --help`"
    assert str(settings.model) == "/mnt/models"
    assert settings.host == "0.0.0.0"  # probes and Services reach the pod IP, not loopback
    assert settings.port == 8001 and settings.metrics_port == 8002
    assert settings.drain_delay_s > 0, "without a drain delay, clients are refused before endpoints catch up"
    assert settings.max_connection_age_s > 0, "without a connection age, clients never re-resolve new replicas"
    assert not settings.tls and settings.auth_token_file is None and not settings.auth_health, (
        "kubelet gRPC probes are plaintext and send no token"
    )
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert settings.port in ports.values()


@pytest.mark.parametrize("which", [0, 1], ids=["k8s", "kserve"])
def test_probes_ask_for_services_the_server_registers(which, monkeypatch):
    name, container = serving_containers()[which]
    settings = container_settings(container, monkeypatch)
    probes = {kind: container[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    for kind, probe in probes.items():
        assert set(probe) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, f"{name} {kind}: not a gRPC probe"
        assert probe["grpc"]["port"] == settings.port, f"{name} {kind}: probes another port than --port"
    # server.py registers exactly these two with grpc.health.v1 (and answers NOT_FOUND for any other name).
    assert probes["readinessProbe"]["grpc"]["service"] == serve_server.INFERENCE_SERVICE
    assert probes["livenessProbe"]["grpc"]["service"] == ""
    assert probes["startupProbe"]["grpc"]["service"] == ""
    assert serve_server.INFERENCE_SERVICE == "inference.GRPCInferenceService"


def test_probe_services_answer_serving_on_a_server_started_from_the_manifest(tmp_path, monkeypatch):
    """The Deployment's own settings, on loopback and free ports, serving a repository laid out as /mnt/models."""
    import dataclasses

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from tests.helpers.models import write_tiny_model

    write_tiny_model(tmp_path / "models" / "tiny" / "1" / "model.onnx")
    container = deployment()["spec"]["template"]["spec"]["containers"][0]
    settings = dataclasses.replace(
        container_settings(container, monkeypatch),
        model=tmp_path / "models", host="127.0.0.1", port=0, metrics_port=0,
        instances=1, intra_op_threads=1, decode_threads=1,
    )
    running = serve_server.start_server(settings)
    try:
        with grpc.insecure_channel(running.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                service = container[kind]["grpc"]["service"]
                reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, f"{kind} service {service!r}"
    finally:
        running.stop(grace=0)


@pytest.mark.parametrize("which", [0, 1], ids=["k8s", "kserve"])
def test_pods_outlive_their_drain(which, monkeypatch):
    name, container = serving_containers()[which]
    settings = container_settings(container, monkeypatch)
    drain = settings.drain_delay_s + settings.grace
    if which == 0:
        period = deployment()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    else:  # the InferenceService's predictor pod spec (Kubernetes' default 30 s when unset)
        period = inference_service()["spec"]["predictor"].get("terminationGracePeriodSeconds", 30)
    assert period > drain, f"{name}: SIGKILL at {period}s comes before --drain-delay-s + --grace = {drain}s"
    # Liveness must not fail a pod out during a drain (both health services are NOT_SERVING then): it takes
    # periodSeconds x failureThreshold of failures, which must outlast the drain.
    live = container["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] > drain
    # Readiness drops the pod on its first failed probe, well inside the drain delay.
    ready = container["readinessProbe"]
    assert ready["periodSeconds"] * ready.get("failureThreshold", 3) <= settings.drain_delay_s


@pytest.mark.parametrize("which", [0, 1], ids=["k8s", "kserve"])
def test_containers_run_locked_down(which):
    name, container = serving_containers()[which]
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    pod = deployment()["spec"]["template"]["spec"] if which == 0 else runtime()["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]], f"{name}: /tmp must be an emptyDir (read-only root)"
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["cpu"] and resources["limits"]["memory"]


def test_deployment_mounts_the_model_claim_read_only():
    pod = deployment()["spec"]["template"]["spec"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/mnt/models")
    assert mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["persistentVolumeClaim"] == {"claimName": "edgecnn-models", "readOnly": True}
    example = yaml.safe_load((K8S / "models-pvc.example.yaml").read_text())
    assert example["metadata"]["name"] == "edgecnn-models"


def test_services_pdb_and_hpa_point_at_the_pods(monkeypatch):
    objects = render(K8S)
    dep = deployment()
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items() and dep["spec"]["selector"]["matchLabels"]
    container = dep["spec"]["template"]["spec"]["containers"][0]
    port_names = {p["name"] for p in container["ports"]}
    services = {s["metadata"]["name"]: s for s in objects if s["kind"] == "Service"}
    assert services["edgecnn-headless"]["spec"]["clusterIP"] == "None"
    assert services["edgecnn"]["spec"].get("clusterIP") in (None, "") and services["edgecnn"]["spec"]["type"] == "ClusterIP"
    for service in services.values():
        assert service["spec"]["selector"] and service["spec"]["selector"].items() <= labels.items()
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names
    assert not services["edgecnn-headless"]["spec"].get("publishNotReadyAddresses")
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items() and pdb["spec"]["selector"]["matchLabels"]
    hpa = one(objects, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", dep["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2  # with the PDB's maxUnavailable 1, one pod always serves
    assert "replicas" not in dep["spec"], "the HPA owns the replica count; a Deployment value resets it on apply"
    # Prometheus scrapes the metrics port the server really serves.
    settings = container_settings(container, monkeypatch)
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == settings.metrics_port and settings.metrics
    assert annotations["prometheus.io/path"] == "/metrics"


def test_hpa_metric_is_served_by_the_adapter_rule():
    from edgecnn.serve.metrics import Metrics

    hpa = one(render(K8S), "HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    name = metric["pods"]["metric"]["name"]
    values = yaml.safe_load((K8S / "prometheus-adapter-values.yaml").read_text())
    rules = [r for r in values["rules"]["custom"] if r["name"]["as"] == name]
    assert len(rules) == 1, f"no prometheus-adapter rule serves {name}"
    rule = rules[0]
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    assert rule["resources"]["overrides"]["namespace"] == {"resource": "namespace"}
    query = rule["metricsQuery"]
    assert "edgecnn_queue_seconds_sum{<<.LabelMatchers>>}" in query
    assert "edgecnn_queue_seconds_count{<<.LabelMatchers>>}" in query
    assert "by (<<.GroupBy>>)" in query
    assert "edgecnn_queue_seconds_count" in rule["seriesQuery"]
    # The server exports that histogram (with _sum and _count) under the labels model and version.
    metrics = Metrics()
    metrics.queue_seconds.labels(model="m", version="1").observe(0.002)
    samples = {s.name for family in metrics.registry.collect() for s in family.samples
               if s.name.startswith("edgecnn_queue_seconds")}
    assert {"edgecnn_queue_seconds_sum", "edgecnn_queue_seconds_count"} <= samples
    # 10m = 10 ms of average queue time per pod (a Kubernetes quantity in seconds).
    assert metric["pods"]["target"]["averageValue"] == "10m"


# --- Dockerfiles -----------------------------------------------------------------------------------------------


def dockerfile(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) per instruction, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / name).read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            out.append((instruction.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfile_text_describes_a_non_root_torch_free_serve_image_checked_by_the_smoke_script(name, monkeypatch):
    """Reads the Dockerfile (no image can be built here); the build's real check is the smoke script it runs,
    which tests/test_installs.py runs on a real edge install."""
    import json

    steps = dockerfile(name)
    froms = [rest for ins, rest in steps if ins == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS builder"), f"{name}: a builder stage and a final stage"
    final = steps[max(i for i, (ins, _) in enumerate(steps) if ins == "FROM"):]
    assert ("USER", "10001:10001") in final
    assert ("ENTRYPOINT", '["edgecnn"]') in final
    exposed = {p for ins, rest in final if ins == "EXPOSE" for p in rest.split()}
    assert exposed == {"8001", "8002"}
    assert any(ins == "COPY" and rest.startswith("--from=builder") for ins, rest in final)
    runs = " ".join(rest for ins, rest in steps if ins == "RUN")
    assert 'pip install ".[serve]"' in runs
    assert "torch" not in runs.replace("pip show torch", "").replace("torch must not", "")
    smoke = [rest for ins, rest in final if ins == "RUN" and "edgecnn.serve.smoke" in rest]
    assert smoke == ["python -m edgecnn.serve.smoke" + (" --provider cpu" if name == "Dockerfile.cuda" else "")]
    assert final.index(("USER", "10001:10001")) < final.index(("RUN", smoke[0]))  # as the image's own user
    # Every COPY source of the build context exists (and is not dockerignored).
    ignored = (ROOT / ".dockerignore").read_text().split()
    for ins, rest in steps:
        if ins == "COPY" and not rest.startswith("--from"):
            *sources, _ = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), f"{name}: COPY {source}: no such path"
                assert source.rstrip("/").removeprefix("./") not in ignored, f"{name}: COPY {source} is dockerignored"
    # CMD parses as `edgecnn serve` flags (ENTRYPOINT edgecnn + CMD).
    (cmd,) = [json.loads(rest) for ins, rest in final if ins == "CMD"]
    settings = parse_serve_args(cmd, monkeypatch)
    assert str(settings.model) == "/mnt/models" and settings.host == "0.0.0.0"
    assert (settings.port, settings.metrics_port) == (8001, 8002)
    if name == "Dockerfile.cuda":
        assert settings.provider == "cuda"
        assert froms[0].split()[0] == froms[1] == "${CUDA_IMAGE}"
        assert re.search(r"ARG CUDA_IMAGE=nvidia/cuda:\S+-runtime-", (ROOT / name).read_text())
        # edgecnn[serve] pulls onnxruntime (CPU); onnxruntime-gpu replaces it, installed after the uninstall.
        assert runs.index("pip uninstall -y onnxruntime") < runs.index('pip install "${ONNXRUNTIME_GPU}"')
        assert "CUDAExecutionProvider" in runs
    else:
        assert froms[1] == "${PYTHON_IMAGE}" and "ARG PYTHON_IMAGE=python:3.11-slim" in (ROOT / name).read_text()


def test_dockerignore_keeps_the_context_small():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "tests", "runs", "**/__pycache__", "**/*.onnx"} <= ignored
    # The smoke script's model is let back in, after the rule that leaves model files out.
    lines = (ROOT / ".dockerignore").read_text().split()
    assert lines.index("!serve/data/smoke.onnx") > lines.index("**/*.onnx")
    assert (ROOT / "serve" / "data" / "smoke.onnx").is_file()

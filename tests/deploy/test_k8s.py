"""The Kubernetes manifests (deploy/k8s/): rendered by the real `kubectl kustomize`, validated offline.

Every rendered object is validated, in strict mode (no unknown fields), against the schemas of the
Kubernetes release that the pinned kubernetes-validate bundles as its newest. Beyond the schemas:
the Deployment's environment is one the service's own Settings accept, its probes and shutdown
budget fit the server's behaviour, the HPA's queue-depth metric is the one the prometheus-adapter
rule serves from a metric the service really exports, and the API-key overlay generates the Secret
the Deployment reads. The adapter's rules are not a Kubernetes schema (they are the adapter's
config file inside a ConfigMap), so their required fields are checked here.

Needs kubectl (Debian's kubernetes-client, which .ci/install-system.sh installs); without it the
tests skip, or fail under CI=true.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from service.app import create_app
from service.settings import Settings
from tests.deploy.conftest import require_tool
from tests.deploy.test_grafana import TARGET_LABELS, Exported, promql_refs, scrape_after_traffic
from tests.server_process import ROOT
from tests.tiny_models import make_tiny_store

pytestmark = pytest.mark.slow

K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = kubernetes_validate.latest_version()
SECRET = "seq2seq-serve-api-keys"
KEY_VARIABLES = {"SEQ2SEQ_API_KEYS": "api-keys", "SEQ2SEQ_ADMIN_API_KEYS": "admin-api-keys"}
ADAPTER_PLACEHOLDERS = ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>")

Render = Callable[[Path], list[dict[str, Any]]]


@pytest.fixture(scope="module")
def render() -> Render:
    kubectl = require_tool("kubectl")

    def run(directory: Path) -> list[dict[str, Any]]:
        done = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
        return [doc for doc in yaml.safe_load_all(done.stdout) if doc]

    return run


def validate_all(objects: list[dict[str, Any]]) -> None:
    """Validate each object against the bundled schemas of K8S_VERSION, unknown fields refused."""
    errors = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert not errors, f"invalid against Kubernetes {K8S_VERSION}:\n" + "\n".join(errors)


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = [o["kind"] for o in objects]
    assert len(kinds) == len(set(kinds)), f"expected one object per kind, got {kinds}"
    return {o["kind"]: o for o in objects}


def api_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def environment(container: dict[str, Any], secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """The variables a pod gets: plain values, and secretKeyRefs resolved in ``secrets`` (name -> data)
    the way the kubelet does: an optional reference to a missing Secret or key sets nothing."""
    env = {}
    for var in container["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        ref = var["valueFrom"]["secretKeyRef"]
        data = secrets.get(ref["name"], {})
        if ref["key"] in data:
            env[var["name"]] = base64.b64decode(data[ref["key"]]).decode()
        else:
            assert ref.get("optional") is True, f"{var['name']}: {ref} is missing and not optional"
    return env


def settings_from(env: dict[str, str], store: Path) -> Settings:
    """The Settings that ``env`` gives the server (the image's model store swapped for ``store``)."""
    fields = {}
    for name, value in env.items():
        field = name.removeprefix("SEQ2SEQ_").lower()
        assert name.startswith("SEQ2SEQ_") and field in Settings.model_fields, f"{name} is not a setting"
        fields[field] = value
    return Settings.model_validate({**fields, "model_store": store})


def test_base_renders_and_validates(render: Render, tmp_path: Path) -> None:
    objects = render(K8S / "base")
    validate_all(objects)
    kinds = by_kind(objects)
    assert set(kinds) == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    container = api_container(kinds["Deployment"])
    env = environment(container, secrets={})
    assert not set(KEY_VARIABLES) & set(env), "without the Secret the server runs without keys"
    settings = settings_from(env, tmp_path)
    assert not settings.api_keys and not settings.admin_api_keys
    refs = {v["name"]: v["valueFrom"]["secretKeyRef"] for v in container["env"] if "valueFrom" in v}
    assert refs == {var: {"name": SECRET, "key": key, "optional": True} for var, key in KEY_VARIABLES.items()}


def test_api_keys_overlay_generates_the_secret_the_deployment_reads(render: Render, tmp_path: Path) -> None:
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("api-keys.env"))
    keys = {
        "api-keys": "infer-key-0123456789abcdef,infer-key-fedcba9876543210",
        "admin-api-keys": "admin-key-0123456789",
    }
    (tree / "api-keys" / "api-keys.env").write_text("".join(f"{k}={v}\n" for k, v in keys.items()))
    objects = render(tree / "api-keys")
    validate_all(objects)
    kinds = by_kind(objects)
    secret = kinds["Secret"]
    assert secret["metadata"]["name"].startswith(f"{SECRET}-"), "the name carries a hash of the keys"
    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == keys
    env = environment(api_container(kinds["Deployment"]), {secret["metadata"]["name"]: secret["data"]})
    assert {var: env[var] for var in KEY_VARIABLES} == {var: keys[key] for var, key in KEY_VARIABLES.items()}
    settings = settings_from(env, tmp_path)  # the server accepts the keys it is given
    assert len(settings.api_keys) == 2 and len(settings.admin_api_keys) == 1


def test_probes_and_shutdown_fit_the_server(render: Render, tmp_path: Path) -> None:
    deployment = by_kind(render(K8S / "base"))["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = api_container(deployment)
    settings = settings_from(environment(container, secrets={}), make_tiny_store(tmp_path / "model_store"))
    assert container["startupProbe"]["httpGet"]["path"] == "/health/ready"  # start-up ends when models serve
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == Settings.model_fields["port"].default  # the image's SEQ2SEQ_PORT too
    probes = [container[p]["httpGet"] for p in ("startupProbe", "readinessProbe", "livenessProbe")]
    assert all(probe["port"] in ports for probe in probes)
    assert asyncio.run(probe_statuses(settings, [probe["path"] for probe in probes])) == [200, 200, 200]

    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain_s = float(pre_stop[1]) + settings.shutdown_grace_s
    assert pod["terminationGracePeriodSeconds"] > drain_s, "SIGKILL would cut the drain short"


async def probe_statuses(settings: Settings, paths: list[str]) -> list[int]:
    """What the probes' paths answer on an app with these settings once it has loaded its models."""
    app = create_app(settings, load_in_background=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [(await client.get(path)).status_code for path in paths]


def test_hpa_scales_on_the_queue_depth_the_adapter_serves(render: Render, tmp_path: Path) -> None:
    base = by_kind(render(K8S / "base"))
    adapter = render(K8S / "prometheus-adapter")
    validate_all(adapter)
    (config_map,) = adapter
    assert config_map["kind"] == "ConfigMap" and config_map["metadata"]["namespace"] == "monitoring"
    rules = yaml.safe_load(config_map["data"]["config.yaml"])["rules"]
    served = {}
    for rule in rules:  # the fields prometheus-adapter needs to serve a rule
        assert isinstance(rule["seriesQuery"], str) and all(p in rule["metricsQuery"] for p in ADAPTER_PLACEHOLDERS)
        overrides = rule["resources"]["overrides"]
        assert {overrides["namespace"]["resource"], overrides["pod"]["resource"]} == {"namespace", "pod"}
        assert rule["name"]["matches"] and rule["name"]["as"]
        served[rule["name"]["as"]] = promql_refs(rule["seriesQuery"])

    hpa, deployment = base["HorizontalPodAutoscaler"], base["Deployment"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        deployment["metadata"]["name"],
    )
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    pods_metric = metrics["Pods"]["pods"]["metric"]["name"]
    assert pods_metric in served, f"no adapter rule serves {pods_metric}"

    exported = Exported.parse(asyncio.run(scrape_after_traffic(make_tiny_store(tmp_path / "model_store"))))
    refs = served[pods_metric]
    for metric in refs.metrics:  # pod and namespace come from the scrape job, like instance and job
        assert metric in exported.labels, f"the adapter rule reads {metric}, which the service does not export"
        assert refs.labels - exported.labels[metric] - TARGET_LABELS <= {"namespace", "pod"}

    pdb = base["PodDisruptionBudget"]
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "a node drain could never evict a pod"

"""The Helm chart, rendered by a real Helm engine and validated against Kubernetes' schemas
(kubernetes-validate, strict) and KubeRay v1.7.0's RayService CRD. No cluster exists here (no
Docker engine, no kube-apiserver), so nothing is applied; see the chart README for what remains
unverified."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from services.core.catalog import load_catalog, parse_catalog
from services.core.layout import layout, model_routes
from services.core.settings import resolve_catalog_path
from services.core.timing import PROXY_HEALTH_CHECK_PERIOD_S
from services.haproxy.rules import BUFFER_BYTES, RETRY_ON
from testkit.helm import ALL_FEATURES, CHART, ROOT, by_kind, render, run_helm

EXAMPLES = sorted((CHART / "examples").glob("values-*.yaml"))
CRDS = ROOT.parent / "shared" / "schemas" / "kuberay"
GATEWAY_CRDS = ROOT.parent / "shared" / "schemas" / "gateway-api"  # Gateway API v1.6.1
K8S_VERSION = "1.33.0"
CRD_KINDS = {"RayService", "ServiceMonitor", "PodMonitor", "PrometheusRule", "NodePool", "HTTPRoute"}
# The worker groups of a test's inline catalog (the chart renders groups from a catalog's cluster block).
ONE_GROUP = {"node_groups": [{"name": "gpu-1x", "gpus": 1, "cpus": 8, "memory_gib": 48, "max_nodes": 2}]}


@cache
def rayservice_schema() -> dict:
    crd = yaml.load((CRDS / "ray.io_rayservices.yaml").read_text(), Loader=yaml.CSafeLoader)
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]


@cache
def httproute_schema() -> dict:
    crd = yaml.load((GATEWAY_CRDS / "gateway.networking.k8s.io_httproutes.yaml").read_text(), Loader=yaml.CSafeLoader)
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]


def with_kuberay_defaults(rayservice: dict) -> dict:
    """KubeRay defaults minReplicas/maxReplicas before validation (see ../shared/README.md)."""
    filled = copy.deepcopy(rayservice)
    for group in filled["spec"]["rayClusterConfig"].get("workerGroupSpecs", []):
        group.setdefault("minReplicas", 0)
        group.setdefault("maxReplicas", 2147483647)
    return filled


def validate_all(docs: list[dict]) -> None:
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            if doc["kind"] == "RayService":
                jsonschema.validate(with_kuberay_defaults(doc), rayservice_schema())
                validate_pod_templates(doc)
            if doc["kind"] == "HTTPRoute":
                jsonschema.validate(doc, httproute_schema())
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def validate_pod_templates(rayservice: dict) -> None:
    cluster = rayservice["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for template in templates:
        pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": template}
        kubernetes_validate.validate(pod_template, K8S_VERSION, strict=True)


@pytest.mark.parametrize("values", [None, *EXAMPLES], ids=lambda p: p.stem if p else "defaults")
def test_lint_strict_and_render_validates(values: Path | None):
    args = ["-f", str(values)] if values else []
    lint = run_helm("lint", "--strict", str(CHART), *args)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    docs = render(*args)
    assert len(by_kind(docs, "RayService")) == 1
    validate_all(docs)


def test_every_optional_object_renders_and_validates():
    docs = render(*ALL_FEATURES)
    kinds = {doc["kind"] for doc in docs}
    assert kinds >= {
        "RayService",
        "Service",
        "Ingress",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "ConfigMap",
        "NodePool",
        "HTTPRoute",
        "Job",
    }
    validate_all(docs)
    rule = by_kind(docs, "PrometheusRule")[0]
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    dashboard = by_kind(docs, "ConfigMap")[0]["data"]["slmserve.json"]
    assert json.loads(dashboard) == json.loads((CHART / "files" / "grafana-dashboard.json").read_text())


def serve_config(docs: list[dict]) -> dict:
    return yaml.safe_load(by_kind(docs, "RayService")[0]["spec"]["serveConfigV2"])


@pytest.mark.parametrize("name", ["phi35", "cpu"])
def test_serve_config_is_the_catalog(name: str):
    config = serve_config(render("--set", f"catalog.name={name}"))
    app = config["applications"][0]
    assert app["import_path"] == "services.app:build_app"
    assert parse_catalog(app["args"]["catalog"]) == load_catalog(resolve_catalog_path(name))
    assert config["http_options"] == {"host": "0.0.0.0", "port": 8000}


@pytest.mark.parametrize(
    ("name", "data_plane", "shape"),
    [("cpu", "", "direct"), ("phi35", "", "direct"), ("phi35", "routed", "routed")],
)
def test_data_plane_follows_the_catalog_unless_values_pin_it(name: str, data_plane: str, shape: str):
    catalog = serve_config(render("--set", f"catalog.name={name}", "--set", f"serve.dataPlane={data_plane}"))[
        "applications"
    ][0]["args"]["catalog"]
    assert parse_catalog(catalog).data_plane == shape
    if data_plane:
        assert catalog["edge"]["data_plane"] == data_plane


@pytest.mark.parametrize("data_plane", ["", "routed"])
def test_the_applications_and_haproxy_s_model_map_are_the_layout_s(data_plane: str):
    """The chart's applications and HAProxy's model map are services/core/layout.py's, name for name:
    on the direct plane the platform's at / and one per model under its prefix, each built by
    services.app:build_app with the same catalog (and its `model`); routed, one application."""
    documents = render("--set", "catalog.name=phi35", "--set", f"serve.dataPlane={data_plane}")
    apps = serve_config(documents)["applications"]
    catalog = parse_catalog(apps[0]["args"]["catalog"])
    plan = layout(catalog, "slmserve")
    assert [(app["name"], app["route_prefix"]) for app in apps] == [("slmserve", "/")] + [
        (model_app.app_name, model_app.route_prefix) for model_app in plan.model_apps.values()
    ]
    assert len(apps) == (1 if data_plane == "routed" else 1 + len(catalog.models))
    for app in apps[1:]:
        assert parse_catalog(app["args"]["catalog"]) == catalog
        assert plan.model_apps[app["args"]["model"]].app_name == app["name"]
    head = by_kind(documents, "RayService")[0]["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    env = {e["name"]: e.get("value") for e in head["spec"]["containers"][0]["env"]}
    assert json.loads(env["SLMSERVE_MODEL_ROUTES"]) == model_routes(catalog, "slmserve")
    assert env["RAY_SERVE_HAPROXY_BINARY_PATH"].endswith("/slmserve-haproxy")
    assert int(env["RAY_SERVE_HAPROXY_TUNE_BUFSIZE"]) == BUFFER_BYTES
    assert float(env["RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S"]) == PROXY_HEALTH_CHECK_PERIOD_S
    assert env["RAY_SERVE_HAPROXY_RETRY_ON"] == RETRY_ON


def test_inline_catalog_wins(tmp_path: Path):
    inline = {
        "catalog": {
            "name": "phi35",
            "inline": {"cluster": ONE_GROUP, "models": [{"name": "mine", "source": "org/model"}]},
        }
    }
    values = tmp_path / "inline.yaml"
    values.write_text(yaml.safe_dump(inline))
    app = serve_config(render("-f", str(values)))["applications"][0]
    assert [m["name"] for m in app["args"]["catalog"]["models"]] == ["mine"]


def test_gpu_resources_tolerations_and_selectors_land_where_values_put_them():
    docs = render("-f", str(CHART / "examples" / "values-aks.yaml"))
    cluster = by_kind(docs, "RayService")[0]["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    head_env = {e["name"]: e.get("value") for e in head["template"]["spec"]["containers"][0]["env"]}
    assert head_env["NVIDIA_VISIBLE_DEVICES"] == "void"
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"gpu-1x", "gpu-2x"}
    for name, gpus, max_replicas in (("gpu-1x", "1", 8), ("gpu-2x", "2", 4)):  # the phi35 catalog's groups
        group = groups[name]
        assert group["maxReplicas"] == max_replicas and group["minReplicas"] == 0
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
        assert group["rayStartParams"]["num-gpus"] == gpus
        spec = group["template"]["spec"]
        resources = spec["containers"][0]["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == gpus == resources["requests"]["nvidia.com/gpu"]
        assert spec["nodeSelector"] == {"accelerator": "nvidia"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        assert {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"} in spec["tolerations"]
        assert {"name": "dshm", "mountPath": "/dev/shm"} in spec["containers"][0]["volumeMounts"]
        assert spec["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/v1/health/ready"
        assert spec["containers"][0]["startupProbe"]["failureThreshold"] == 180
    options = cluster["autoscalerOptions"]
    assert cluster["enableInTreeAutoscaling"] is True and options["version"] == "v2"
    assert options["upscalingMode"] == "Default" and options["idleTimeoutSeconds"] == 300


def _cluster(docs: list[dict]) -> dict:
    return by_kind(docs, "RayService")[0]["spec"]["rayClusterConfig"]


@pytest.mark.parametrize("name", ["phi35", "cpu"])
def test_worker_groups_and_autoscaler_options_are_the_catalogs_cluster_block(name: str):
    """One source for the chart and the local autoscaling cluster: each node group of the catalog is
    a worker group of its GPUs, CPUs, memory and bounds; the autoscaler's idle timeout and upscaling
    mode are the catalog's."""
    cluster_options = load_catalog(resolve_catalog_path(name)).cluster
    assert cluster_options is not None
    docs = render("--set", f"catalog.name={name}")
    validate_all(docs)
    cluster = _cluster(docs)
    groups = {group["groupName"]: group for group in cluster["workerGroupSpecs"]}
    assert list(groups) == [group.name for group in cluster_options.node_groups]
    for node_group in cluster_options.node_groups:
        group = groups[node_group.name]
        assert (group["minReplicas"], group["maxReplicas"]) == (node_group.min_nodes, node_group.max_nodes)
        assert group["replicas"] == node_group.min_nodes
        assert group["rayStartParams"]["num-gpus"] == str(node_group.gpus)
        spec = group["template"]["spec"]
        resources = spec["containers"][0]["resources"]
        expected = {"cpu": f"{node_group.cpus:g}", "memory": f"{node_group.memory_gib:g}Gi"}
        if node_group.gpus:
            expected["nvidia.com/gpu"] = str(node_group.gpus)
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        else:  # a CPU group asks for no GPU and does not tolerate GPU nodes' taint
            assert "tolerations" not in spec
        assert resources["requests"] == expected == resources["limits"]
    options = cluster["autoscalerOptions"]
    assert options["idleTimeoutSeconds"] == cluster_options.autoscaler.idle_timeout_s
    assert options["upscalingMode"] == cluster_options.autoscaler.upscaling_mode


def test_a_changed_cluster_block_changes_the_rendered_groups(tmp_path: Path):
    catalog = yaml.safe_load(resolve_catalog_path("phi35").read_text())
    catalog["cluster"] = {
        "autoscaler": {"idle_timeout_s": 42, "upscaling_mode": "Aggressive"},
        "node_groups": [{"name": "h200-2x", "gpus": 2, "cpus": 24, "memory_gib": 200, "min_nodes": 1, "max_nodes": 3}],
    }
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump({"catalog": {"inline": catalog}, "workerGroups": [{"name": "h200-2x", "shmSize": "64Gi"}]})
    )
    cluster = _cluster(render("-f", str(values)))
    (group,) = cluster["workerGroupSpecs"]
    assert (group["groupName"], group["minReplicas"], group["maxReplicas"]) == ("h200-2x", 1, 3)
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] == "200Gi"
    shm = next(v for v in group["template"]["spec"]["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["sizeLimit"] == "64Gi"  # the values entry's pod setting
    assert (cluster["autoscalerOptions"]["idleTimeoutSeconds"], cluster["autoscalerOptions"]["upscalingMode"]) == (
        42,
        "Aggressive",
    )


def test_a_catalog_without_a_cluster_block_takes_whole_groups_from_values(tmp_path: Path):
    group = {"name": "gpu-4x", "gpusPerPod": 4, "minReplicas": 0, "maxReplicas": 2, "resources": {}}
    values = {"catalog": {"inline": {"models": [{"name": "m", "source": "org/m"}]}}, "workerGroups": [group]}
    values |= {"autoscaler": {"idleTimeoutSeconds": 60, "upscalingMode": "Conservative"}}
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    cluster = _cluster(render("-f", str(path)))
    (rendered,) = cluster["workerGroupSpecs"]
    assert (rendered["groupName"], rendered["replicas"], rendered["maxReplicas"]) == ("gpu-4x", 0, 2)
    assert rendered["rayStartParams"]["num-gpus"] == "4"
    assert cluster["autoscalerOptions"]["idleTimeoutSeconds"] == 60


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"workerGroups": [{"name": "gpu-1x", "maxReplicas": 2}]}, "workerGroups[gpu-1x].maxReplicas: the catalog"),
        ({"workerGroups": [{"name": "gpu-1x", "gpusPerPod": 2}]}, "workerGroups[gpu-1x].gpusPerPod: the catalog"),
        (
            {"workerGroups": [{"name": "gpu-8x"}]},
            "workerGroups[gpu-8x]: the catalog's cluster.node_groups has no group",
        ),
        ({"autoscaler": {"idleTimeoutSeconds": 60}}, "autoscaler.idleTimeoutSeconds: the catalog's cluster.autoscaler"),
        (
            {"catalog": {"inline": {"models": [{"name": "m", "source": "org/m"}]}}, "workerGroups": [{"name": "g"}]},
            "workerGroups[g].gpusPerPod is required",
        ),
        (
            {"catalog": {"inline": {"models": [{"name": "m", "source": "org/m"}]}}},
            "no worker groups: give the catalog a cluster.node_groups block",
        ),
    ],
)
def test_values_cannot_disagree_with_the_catalogs_cluster_block(values: dict, message: str, tmp_path: Path):
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    result = run_helm("template", "rel", str(CHART), "-f", str(path))
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_group_selectors_merge_with_gpu_selector():
    docs = render("-f", str(CHART / "examples" / "values-gfd.yaml"))
    groups = by_kind(docs, "RayService")[0]["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    selector = groups[1]["template"]["spec"]["nodeSelector"]
    assert selector == {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
        "nvidia.com/gpu.count": "8",
    }
    assert by_kind(docs, "PersistentVolumeClaim") == []  # existingClaim: nothing created
    volumes = {v["name"]: v for v in groups[0]["template"]["spec"]["volumes"]}
    assert volumes["model-cache"]["persistentVolumeClaim"]["claimName"] == "shared-model-cache"


def test_secrets_are_referenced_never_inlined():
    docs = render("--set", "secrets.hfToken.name=hf", "--set", "secrets.apiKeys.name=keys")
    head = by_kind(docs, "RayService")[0]["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    env = {e["name"]: e for e in head["containers"][0]["env"]}
    assert "HF_TOKEN" not in env  # a mounted file, never an environment variable
    assert env["HF_TOKEN_PATH"]["value"] == "/etc/slmserve/hf-token/HF_TOKEN"
    assert {"name": "hf-token", "secret": {"secretName": "hf"}} in head["volumes"]
    assert {"name": "api-keys", "secret": {"secretName": "keys"}} in head["volumes"]
    assert by_kind(docs, "Secret") == []


def test_tracing_reaches_every_ray_container_only_when_set():
    url = "http://otel-collector.monitoring:4318/v1/traces"
    for args, expected in ((("--set", f"tracing.otlpTracesEndpoint={url}"), url), ((), None)):
        cluster = by_kind(render(*args), "RayService")[0]["spec"]["rayClusterConfig"]
        templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
        for template in templates:
            env = {e["name"]: e.get("value") for e in template["spec"]["containers"][0]["env"]}
            assert env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == expected


def lora_catalog(tmp_path: Path, adapters_dir: str) -> str:
    values = tmp_path / "lora.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "catalog": {
                    "inline": {
                        "cluster": ONE_GROUP,
                        "models": [
                            {
                                "name": "phi",
                                "source": "microsoft/Phi-3.5-mini-instruct",
                                "lora": {"adapters_dir": adapters_dir},
                            }
                        ],
                    }
                }
            }
        )
    )
    return str(values)


@pytest.mark.parametrize("source", ["pvc", "init"])
def test_lora_adapters_come_from_a_pvc_or_an_init_container_on_every_ray_pod(tmp_path: Path, source: str):
    args = ["-f", lora_catalog(tmp_path, "/adapters/phi"), "--set", "loraAdapters.enabled=true"]
    args += (
        ["--set", "loraAdapters.existingClaim=phi-adapters"]
        if source == "pvc"
        else [
            "--set",
            "loraAdapters.initContainer.image=registry.example/adapters:1",
            "--set-json",
            'loraAdapters.initContainer.command=["cp","-r","/src/.","/adapters/"]',
        ]
    )
    docs = render(*args)
    validate_all(docs)
    cluster = by_kind(docs, "RayService")[0]["spec"]["rayClusterConfig"]
    for template in [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]:
        pod = template["spec"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == "lora-adapters"]
        mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
        assert mounts["lora-adapters"] == {"name": "lora-adapters", "mountPath": "/adapters", "readOnly": True}
        if source == "pvc":
            assert volume["persistentVolumeClaim"] == {"claimName": "phi-adapters", "readOnly": True}
            assert "initContainers" not in pod
        else:
            assert volume == {"name": "lora-adapters", "emptyDir": {}}
            (init,) = pod["initContainers"]
            assert init["command"] == ["cp", "-r", "/src/.", "/adapters/"]
            assert init["volumeMounts"] == [{"name": "lora-adapters", "mountPath": "/adapters"}]


def test_lora_adapters_need_a_source_and_the_catalog_s_directory_on_the_volume(tmp_path: Path):
    result = run_helm(
        "template",
        "rel",
        str(CHART),
        "-f",
        lora_catalog(tmp_path, "/adapters/phi"),
        "--set",
        "loraAdapters.enabled=true",
    )
    assert result.returncode != 0 and "loraAdapters.existingClaim" in result.stderr
    result = run_helm(
        "template",
        "rel",
        str(CHART),
        "-f",
        lora_catalog(tmp_path, "/elsewhere"),
        "--set",
        "loraAdapters.enabled=true",
        "--set",
        "loraAdapters.existingClaim=x",
    )
    assert result.returncode != 0 and "outside loraAdapters.mountPath /adapters" in result.stderr


def test_a_pinned_profile_reaches_every_ray_container_only_when_set():
    for args, expected in ((("--set", "serve.profile=bf16-throughput"), "bf16-throughput"), ((), None)):
        cluster = by_kind(render(*args), "RayService")[0]["spec"]["rayClusterConfig"]
        for template in [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]:
            env = {e["name"]: e.get("value") for e in template["spec"]["containers"][0]["env"]}
            assert env.get("SLMSERVE_PROFILE") == expected


def test_a_stopping_gpu_pod_drains_its_node_first():
    """Every worker pod's preStop moves its engine replicas off the node (services/drain.py) before
    the kill, giving up 15 s before the grace period ends; switched off, neither is rendered."""
    cluster = by_kind(render("--set", "workerStop.gracePeriodSeconds=600"), "RayService")[0]["spec"]["rayClusterConfig"]
    assert cluster["workerGroupSpecs"]
    for group in cluster["workerGroupSpecs"]:
        spec = group["template"]["spec"]
        assert spec["terminationGracePeriodSeconds"] == 600
        command = spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
        assert command == ["/opt/venv/bin/slmserve", "node", "drain", "--deadline-s", "585"]
    assert "lifecycle" not in cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    plain = by_kind(render("--set", "workerStop.drain=false"), "RayService")[0]["spec"]["rayClusterConfig"]
    for group in plain["workerGroupSpecs"]:
        assert "lifecycle" not in group["template"]["spec"]["containers"][0]
        assert "terminationGracePeriodSeconds" not in group["template"]["spec"]


def test_hardened_pods():
    cluster = by_kind(render(), "RayService")[0]["spec"]["rayClusterConfig"]
    for template in [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]:
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        context = spec["containers"][0]["securityContext"]
        assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == ["ALL"]
        assert spec["securityContext"]["runAsUser"] > 10000
    for group in cluster["workerGroupSpecs"]:
        assert group["template"]["spec"]["automountServiceAccountToken"] is False


@pytest.mark.parametrize(("args", "flag"), [([], "1"), (["--set", "serve.ingress=proxy"], "0")])
def test_ingress_mode_reaches_every_ray_container(args: list[str], flag: str):
    cluster = by_kind(render(*args), "RayService")[0]["spec"]["rayClusterConfig"]
    for template in [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]:
        env = {e["name"]: e.get("value") for e in template["spec"]["containers"][0]["env"]}
        assert env["RAY_SERVE_ENABLE_HA_PROXY"] == flag


@pytest.mark.parametrize(
    ("models", "data_plane", "forward_body"),
    [
        ([{"name": "m", "source": "org/m"}], "", "0"),  # one fixed replica: no replica choice, no router
        ([{"name": "m", "source": "org/m", "deployment": {"num_replicas": 2}}], "", "1"),
        ([{"name": "m", "source": "org/m", "deployment": {"autoscaling_config": {"max_replicas": 4}}}], "", "1"),
        (
            [
                {
                    "name": "m",
                    "source": "org/m",
                    "deployment": {"num_replicas": 2},
                    "routing": {"policy": "power-of-two"},
                }
            ],
            "",
            "0",
        ),
        (
            [
                {
                    "name": "m",
                    "source": "org/m",
                    "deployment": {"num_replicas": 2},
                    "routing": {"policy": "session"},
                }
            ],
            "",
            "1",
        ),  # a Responses API follow-up's previous_response_id
        (
            [
                {
                    "name": "m",
                    "source": "org/m",
                    "deployment": {"num_replicas": 2},
                    "routing": {"policy": "least-loaded"},
                    "lora": {"adapters_dir": "/adapters"},
                }
            ],
            "",
            "1",
        ),  # adapter affinity reads `model`
        ([{"name": "m", "source": "org/m", "deployment": {"num_replicas": 2}}], "routed", "0"),
        ([{"name": "a", "source": "org/a"}, {"name": "b", "source": "org/b"}], "", "0"),
        (
            [{"name": "a", "source": "org/a"}, {"name": "b", "source": "org/b", "deployment": {"num_replicas": 2}}],
            "",
            "1",
        ),
    ],
)
def test_haproxy_gets_the_routing_switches_the_catalog_needs(tmp_path: Path, models, data_plane, forward_body):
    """Mirrors services/runtime.py routing_environment (unit-tested there) for the cluster."""
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "catalog": {
                    "inline": {"edge": {"session_header": "X-Conversation"}, "cluster": ONE_GROUP, "models": models}
                },
                "serve": {"dataPlane": data_plane},
            }
        )
    )
    cluster = by_kind(render("-f", str(values)), "RayService")[0]["spec"]["rayClusterConfig"]
    for template in [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]:
        env = {e["name"]: e.get("value") for e in template["spec"]["containers"][0]["env"]}
        assert env["RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY"] == forward_body
        assert env["RAY_SERVE_SESSION_ID_HEADER_KEY"] == "x-conversation"


def ray_envs(docs: list[dict]) -> list[dict[str, str]]:
    cluster = by_kind(docs, "RayService")[0]["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    return [{e["name"]: e.get("value") for e in t["spec"]["containers"][0]["env"]} for t in templates]


def test_the_gateway_s_routes_send_every_catalog_name_to_the_service_and_tell_haproxy_the_header():
    """One rule per model matching each of its names in the body-based router's header, a last rule
    for everything else, all to this release's Service; HAProxy learns the header (and places by it,
    tests/unit/test_haproxy_rules.py). No rule names the internal prefix, which HAProxy refuses."""
    docs = render(*ALL_FEATURES, "--set", "gateway.httpRoute.modelHeader=X-Model")
    (route,) = by_kind(docs, "HTTPRoute")
    catalog = load_catalog(resolve_catalog_path("phi35"))
    *per_model, last = route["spec"]["rules"]
    assert len(per_model) == len(catalog.models)
    for entry, rule in zip(catalog.models, per_model, strict=True):
        names = [m["headers"][0]["value"] for m in rule["matches"]]
        assert names == [entry.name, *entry.aliases]
        assert {m["headers"][0]["name"] for m in rule["matches"]} == {"X-Model"}
        assert all(m["path"] == {"type": "PathPrefix", "value": "/v1/"} for m in rule["matches"])
    assert last["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    service = next(s for s in by_kind(docs, "Service") if s["spec"]["ports"][0]["name"] == "http")  # the API's
    for rule in route["spec"]["rules"]:
        assert rule["backendRefs"] == [
            {"name": service["metadata"]["name"], "port": service["spec"]["ports"][0]["port"]}
        ]
    assert "/_slmserve" not in json.dumps(route)
    assert all(env["SLMSERVE_MODEL_HEADER"] == "X-Model" for env in ray_envs(docs))
    assert all("SLMSERVE_MODEL_HEADER" not in env for env in ray_envs(render()))
    assert not by_kind(render(), "HTTPRoute")


def test_more_models_than_an_httproute_holds_are_refused(tmp_path: Path):
    models = [{"name": f"m{i}", "source": f"org/m{i}"} for i in range(16)]
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "catalog": {"inline": {"cluster": ONE_GROUP, "models": models}},
                "gateway": {"httpRoute": {"enabled": True, "parentRefs": [{"name": "g"}]}},
            }
        )
    )
    result = run_helm("template", "rel", str(CHART), "-f", str(values))
    assert result.returncode != 0 and "16 models need 17 rules" in result.stderr, result.stderr


def test_with_api_keys_the_service_monitor_sends_a_key():
    """/metrics asks for an API key once keys are on (services/edge/middleware.py): the monitor must
    carry one, or Prometheus only ever gets 401 (found with a real Prometheus, tests/unit/test_prometheus.py)."""
    (monitor,) = by_kind(render(*ALL_FEATURES), "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["authorization"] == {"type": "Bearer", "credentials": {"name": "scrape-key", "key": "token"}}
    (plain,) = by_kind(render("--set", "metrics.serviceMonitor.enabled=true"), "ServiceMonitor")
    assert "authorization" not in plain["spec"]["endpoints"][0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "serve.ingress=nginx"], "ingress"),
        (["--set", "imagee.tag=x"], "additional properties 'imagee' not allowed"),
        (["--set", "image.pullPolicy=Sometimes"], "pullPolicy"),
        (["--set", "autoscaler.upscalingMode=Fast"], "upscalingMode"),
        (
            ["--set-json", 'workerGroups=[{"name":"g","gpusPerPod":0,"minReplicas":0,"maxReplicas":1,"resources":{}}]'],
            "gpusPerPod",
        ),
        (
            [
                "--set-json",
                'workerGroups=[{"name":"g","gpusPerPod":1,"minReplicas":0,"maxReplicas":1,"resources":{},"typo":1}]',
            ],
            "typo",
        ),
        (["--set", "service.port=70000"], "port"),
        (["--set", "modelCache.size=lots"], "size"),
        (["--set", "tracing.otlpTracesEndpoint=collector:4318"], "otlpTracesEndpoint"),
        (["--set", "catalog.name=nosuch"], "no file catalogs/nosuch.yaml"),
        (
            ["--set", "metrics.serviceMonitor.enabled=true", "--set", "secrets.apiKeys.name=keys"],
            "metrics.serviceMonitor.authorization.name is required",
        ),
        (["--set", "gateway.httpRoute.enabled=true"], "parentRefs must name the Gateway"),
        (
            [
                "--set",
                "gateway.httpRoute.enabled=true",
                "--set",
                "gateway.httpRoute.parentRefs[0].name=g",
                "--set",
                "serve.dataPlane=routed",
            ],
            "needs the direct data plane",
        ),
        (["--set", "gateway.httpRoute.modelHeader=X-Model if TRUE"], "modelHeader"),
    ],
)
def test_bad_values_are_rejected(args: list[str], message: str):
    result = run_helm("template", "rel", str(CHART), *args)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_kustomize_base_matches_the_chart():
    result = run_helm("template", "slmserve", str(CHART), "--namespace", "slmserve")
    assert result.returncode == 0, result.stderr
    committed = (ROOT / "deploy" / "kustomize" / "base" / "slmserve.yaml").read_text()
    assert committed == result.stdout, "deploy/kustomize/base is stale: run `make manifests`"


def test_a_catalog_with_the_edge_blocks_old_name_reaches_serve_as_edge(tmp_path: Path):
    models = [{"name": "a", "source": "org/a"}, {"name": "b", "source": "org/b"}]
    values = tmp_path / "values.yaml"
    inline = {"router": {"session_header": "X-Conversation"}, "cluster": ONE_GROUP, "models": models}
    values.write_text(yaml.safe_dump({"catalog": {"inline": inline}, "serve": {"dataPlane": "routed"}}))
    docs = render("-f", str(values))
    for application in serve_config(docs)["applications"]:
        catalog = application["args"]["catalog"]
        assert "router" not in catalog and catalog["edge"] == {
            "session_header": "X-Conversation",
            "data_plane": "routed",
        }
    assert {env["RAY_SERVE_SESSION_ID_HEADER_KEY"] for env in ray_envs(docs)} == {"x-conversation"}
    values.write_text(yaml.safe_dump({"catalog": {"inline": {**inline, "edge": {}}}}))
    result = run_helm("template", "rel", str(CHART), "-f", str(values))
    assert result.returncode != 0 and "router: is edge:'s old name" in result.stderr, result.stderr


def test_service_classes_reach_every_application_and_schedule_its_engines_by_priority(tmp_path: Path):
    """The chart carries the catalog's tenants and classes to Serve unchanged; each application's
    catalog, as services/app.py validates it, runs its engines with priority scheduling."""
    classes = {"classes": {"gold": {"priority": 0, "share": 2}, "bulk": {"priority": 5}}, "tenants": {"a": "gold"}}
    inline = {
        "catalog": {
            "inline": {
                "edge": {"service_classes": classes},
                "cluster": ONE_GROUP,
                "models": [{"name": "mine", "source": "org/model", "max_in_flight": 8}],
            }
        }
    }
    values = tmp_path / "classes.yaml"
    values.write_text(yaml.safe_dump(inline))
    for app in serve_config(render("-f", str(values)))["applications"]:
        catalog = parse_catalog(app["args"]["catalog"])
        assert catalog.edge.service_classes.class_of("a")[0] == "gold"
        assert catalog.models[0].engine_args["scheduling_policy"] == "priority"


def test_a_model_that_scales_to_zero_renders_its_hold_policy_and_is_left_to_the_platform(tmp_path: Path):
    held = {
        "name": "idle-model",
        "source": "org/idle",
        "deployment": {"autoscaling_config": {"min_replicas": 0, "max_replicas": 2, "downscale_to_zero_delay_s": 60}},
        "idle": {"hold_timeout_s": 90},
    }
    models = [{"name": "busy", "source": "org/busy"}, held]
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"catalog": {"inline": {"cluster": ONE_GROUP, "models": models}}}))
    documents = render("-f", str(values))
    apps = serve_config(documents)["applications"]
    catalog = parse_catalog(apps[0]["args"]["catalog"])
    assert catalog.resolve("idle-model").scales_to_zero and catalog.resolve("idle-model").idle.hold_timeout_s == 90
    # each application builds its deployments from this catalog (services.app): the engine may go to zero
    assert catalog.resolve("idle-model").deployment.to_serve_options()["autoscaling_config"]["min_replicas"] == 0
    assert all(parse_catalog(app["args"]["catalog"]) == catalog for app in apps)
    head = by_kind(documents, "RayService")[0]["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    env = {e["name"]: e.get("value") for e in head["spec"]["containers"][0]["env"]}
    assert json.loads(env["SLMSERVE_MODEL_ROUTES"]) == model_routes(catalog, "slmserve") == {"busy": "/_slmserve/busy"}


def test_the_load_test_runs_the_projects_locustfile_distributed_against_the_release():
    """Off by default; on, a master Job (after the release's readiness) and a Job of workers that find
    it through its Service, over the locustfile and the modules deploy/Dockerfile.loadtest copies."""
    import ast

    assert not by_kind(render(), "Job")
    docs = render("--set", "loadtest.enabled=true", "--set", "loadtest.workers=3")
    jobs = {job["metadata"]["labels"]["app.kubernetes.io/component"]: job for job in by_kind(docs, "Job")}
    master, workers = jobs["locust-master"]["spec"], jobs["locust-worker"]["spec"]
    (service,) = [s for s in by_kind(docs, "Service") if s["spec"]["ports"][0]["name"] == "locust"]
    api = next(s for s in by_kind(docs, "Service") if s["spec"]["ports"][0]["name"] == "http")
    host = f"http://{api['metadata']['name']}:{api['spec']['ports'][0]['port']}"
    (container,) = master["template"]["spec"]["containers"]
    args = container["args"]
    assert {"--master", "--headless", "--expect-workers=3", f"--host={host}"} <= set(args)
    assert args[args.index("-f") + 1] == "/opt/slmserve/loadtests/locustfile.py"
    (csv,) = [a for a in args if a.startswith("--csv=")]
    (results,) = [m for m in container["volumeMounts"] if m["name"] == "results"]
    assert csv.removeprefix("--csv=").startswith(results["mountPath"] + "/")
    for job in (master, workers):  # each waits for the release's readiness first
        assert job["template"]["spec"]["initContainers"][0]["command"][-2] == host
    assert workers["parallelism"] == workers["completions"] == 3
    worker_args = workers["template"]["spec"]["containers"][0]["args"]
    assert "--worker" in worker_args and f"--master-host={service['metadata']['name']}" in worker_args
    pod_labels = master["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    # The release's NetworkPolicy selects the serving pods, not the load test's.
    policies = {p["metadata"]["name"]: p for p in by_kind(docs, "NetworkPolicy")}
    serving = policies[api["metadata"]["name"]]["spec"]["podSelector"]["matchLabels"]
    assert not serving.items() <= pod_labels.items()
    own = policies[f"{api['metadata']['name']}-loadtest"]["spec"]  # and its own lets the workers reach the master
    assert own["podSelector"]["matchLabels"].items() <= pod_labels.items()
    worker_labels = workers["template"]["metadata"]["labels"]
    assert own["ingress"][0]["from"][0]["podSelector"]["matchLabels"].items() <= worker_labels.items()
    # The image holds every project module the locustfile and the readiness wait import.
    copied = {
        Path(name).stem
        for line in (ROOT / "deploy" / "Dockerfile.loadtest").read_text().splitlines()
        if line.startswith("COPY loadtests/")
        for name in line.split()[1:-1]
    }
    for module in ("locustfile", "wait_ready"):
        assert module in copied
        tree = ast.parse((ROOT / "loadtests" / f"{module}.py").read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert {m.split(".")[1] for m in imported if m.startswith("loadtests.")} <= copied, module


@pytest.mark.parametrize(
    ("head_cpu", "threads", "head_threads", "worker_threads"),
    [
        (None, None, "4", "8"),  # the chart's head (4 CPUs) and ONE_GROUP's pods (8)
        ("16", None, "16", "8"),
        ("2500m", None, "2", "8"),
        ("500m", None, "1", "8"),
        ("16", 6, "6", "6"),
    ],
)
def test_haproxy_threads_follow_each_pod_s_cpu_request(head_cpu, threads, head_threads, worker_threads, tmp_path):
    """Each pod's HAProxy gets its CPU request in whole cores (at least 1) unless a number is set."""
    values = {"catalog": {"inline": {"cluster": ONE_GROUP, "models": [{"name": "mine", "source": "org/model"}]}}}
    if head_cpu is not None:
        size = {"cpu": head_cpu, "memory": "16Gi"}
        values["head"] = {"resources": {"requests": size, "limits": size}}
    if threads is not None:
        values["serve"] = {"haproxyThreads": threads}
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    head, *workers = ray_envs(render("-f", str(path)))
    assert head["RAY_SERVE_HAPROXY_NBTHREAD"] == head_threads
    assert workers and {env["RAY_SERVE_HAPROXY_NBTHREAD"] for env in workers} == {worker_threads}


def test_haproxy_threads_read_a_limit_where_a_pod_requests_no_cpu(tmp_path):
    path = tmp_path / "values.yaml"
    # A null in a user's values drops the chart's default request.
    resources = {"requests": {"cpu": None, "memory": "8Gi"}, "limits": {"cpu": 3, "memory": "8Gi"}}
    path.write_text(yaml.safe_dump({"head": {"resources": resources}}))
    head, *_ = ray_envs(render("-f", str(path)))
    assert head["RAY_SERVE_HAPROXY_NBTHREAD"] == "3"


def test_haproxy_threads_refuses_what_is_not_a_count():
    for bad in ("0", "many"):
        result = run_helm("template", "rel", str(CHART), "--set", f"serve.haproxyThreads={bad}")
        assert result.returncode != 0 and "haproxyThreads" in result.stderr

"""Contract tests for the renderer: the output is valid for the real tools and
wires the mesh as designed, for both editions and both fixture topologies.

Every check here has a negative twin that breaks a rendered object on purpose
and asserts the check notices, so no check can pass by not looking.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from harness.contract.scheduling import Taint, kind_nodes
from harness.render import Rendered, checks, render
from harness.render.consul import ACCESS_LOG_FIELDS
from harness.topology.model import Edition, Topology, load_topology
from tests.conftest import REPO

REFERENCE = REPO.parent / "shared" / "reference" / "consul-k8s-v1.9.11"
FIXTURES = {"default": REPO / "fixtures" / "topology.yaml", "wide": REPO / "fixtures" / "topology-wide.yaml"}
K8S_VERSION = "1.37.0"
needs_reference = pytest.mark.skipif(not REFERENCE.is_dir(), reason="consul-k8s reference data absent")


@cache
def _topology(name: str) -> Topology:
    return load_topology(FIXTURES[name])


@dataclass
class Bundle:
    """A mutable deep copy of a render, for the negative tests to break."""

    topology: Topology
    kind_config: dict[str, Any]
    helm_values: dict[str, Any]
    objects: list[dict[str, Any]]

    def find(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        for o in self.objects:
            md = o["metadata"]
            if o["kind"] == kind and md["name"] == name and namespace in (None, md.get("namespace")):
                return o
        raise KeyError((kind, name, namespace))

    def remove(self, kind: str, name: str, namespace: str | None = None) -> None:
        self.objects.remove(self.find(kind, name, namespace))


@cache
def _rendered(topo: str, edition: str) -> Rendered:
    return render(_topology(topo), Edition(edition))


def bundle(topo: str = "default", edition: str = "ce") -> Bundle:
    r = _rendered(topo, edition)
    return Bundle(r.topology, copy.deepcopy(r.kind_config), copy.deepcopy(r.helm_values), copy.deepcopy(r.objects))


CASES = [(t, e) for t in FIXTURES for e in ("ce", "enterprise")]


@pytest.fixture(params=CASES, ids=[f"{t}-{e}" for t, e in CASES])
def rendered(request: pytest.FixtureRequest) -> Bundle:
    return bundle(*request.param)


def _pod(b: Bundle, deployment: str, namespace: str) -> dict[str, Any]:
    spec: dict[str, Any] = b.find("Deployment", deployment, namespace)["spec"]["template"]
    return spec


# -- Kubernetes objects ---------------------------------------------------------
def _k8s_errors(objects: list[dict[str, Any]]) -> list[str]:
    errors = []
    for o in objects:
        if o["apiVersion"].startswith("consul.hashicorp.com/"):
            continue
        try:
            kubernetes_validate.validate(o, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{o['kind']} {o['metadata']['name']}: {exc.message}")
    return errors


@pytest.mark.slow  # kubernetes-validate loads the API schemas
def test_k8s_objects_validate(rendered: Bundle) -> None:
    assert _k8s_errors(rendered.objects) == []
    kinds = {o["kind"] for o in rendered.objects}
    assert {"Namespace", "ServiceAccount", "Service", "Deployment", "ConfigMap"} <= kinds


@pytest.mark.slow  # kubernetes-validate loads the API schemas
def test_k8s_validation_catches_breakage() -> None:
    b = bundle()
    dep = b.find("Deployment", "product-api-lax-1a")
    dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["prot"] = 9090  # typo'd field
    b.find("Service", "postgres")["spec"]["ports"][0]["port"] = "5432"  # wrong type
    errors = _k8s_errors(b.objects)
    assert len(errors) == 2, errors


# -- Consul CRDs against the chart's schemas ---------------------------------------
def _strict(schema: Any) -> Any:
    """The CRD schema, rejecting unknown fields. The API server would silently
    prune them, so a typo would be a config entry that quietly does nothing."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def _crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    out = {}
    for path in sorted((REFERENCE / "crds").glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd:
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = _strict(version["schema"]["openAPIV3Schema"])
                out[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return out


def _crd_errors(objects: list[dict[str, Any]]) -> list[str]:
    validators = _crd_validators()
    errors = []
    for o in objects:
        if not o["apiVersion"].startswith("consul.hashicorp.com/"):
            continue
        v = validators.get((o["apiVersion"], o["kind"]))
        if v is None:
            errors.append(f"{o['kind']} {o['metadata']['name']}: no CRD {o['apiVersion']}")
            continue
        errors += [f"{o['kind']} {o['metadata']['name']}: {e.json_path}: {e.message}" for e in v.iter_errors(o)]
    return errors


@needs_reference
def test_consul_crds_validate(rendered: Bundle) -> None:
    assert _crd_errors(rendered.objects) == []
    kinds = {o["kind"] for o in rendered.objects if o["apiVersion"].startswith("consul.")}
    assert kinds == {"ProxyDefaults", "ServiceDefaults", "ServiceResolver", "ServiceRouter", "ServiceIntentions"}


@needs_reference
def test_crd_validation_catches_breakage() -> None:
    b = bundle()
    b.find("ServiceResolver", "product-api-lax-1a")["spec"]["failover"]["*"]["target"] = [{"service": "x"}]
    b.find("ServiceRouter", "product-api")["spec"]["routes"][0]["destination"]["numRetries"] = "2"
    b.find("ProxyDefaults", "global")["apiVersion"] = "consul.hashicorp.com/v2"
    errors = _crd_errors(b.objects)
    assert len(errors) == 3, errors


# Envoy retry conditions Consul accepts (agent/structs isValidRetryCondition).
VALID_RETRY_ON = {
    "5xx", "gateway-error", "reset", "connect-failure", "envoy-ratelimited", "retriable-4xx",
    "refused-stream", "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
}  # fmt: skip


def _retry_errors(objects: list[dict[str, Any]]) -> list[str]:
    errors = []
    for o in objects:
        if o["kind"] == "ServiceRouter":
            for route in o["spec"]["routes"]:
                bad = set(route["destination"].get("retryOn", [])) - VALID_RETRY_ON
                if bad or not route["destination"].get("numRetries"):
                    errors.append(f"{o['metadata']['name']}: retryOn {sorted(bad)}")
    return errors


def test_router_retries_are_valid(rendered: Bundle) -> None:
    assert _retry_errors(rendered.objects) == []
    routers = [o for o in rendered.objects if o["kind"] == "ServiceRouter"]
    tcp = {s.name for s in rendered.topology.services if s.protocol == "tcp"}
    http_services = {o["metadata"]["name"] for o in rendered.objects if o["kind"] == "Service"} - tcp
    assert {o["metadata"]["name"] for o in routers} == http_services


def test_router_retry_check_catches_breakage() -> None:
    b = bundle()
    b.find("ServiceRouter", "public-api")["spec"]["routes"][0]["destination"]["retryOn"].append("connection-failure")
    assert len(_retry_errors(b.objects)) == 1


# -- Helm values ---------------------------------------------------------------------
@cache
def _reference_values() -> Any:
    return yaml.safe_load((REFERENCE / "values.yaml").read_text())


@needs_reference
def test_helm_values_use_chart_keys(rendered: Bundle) -> None:
    assert checks.unknown_helm_keys(rendered.helm_values, _reference_values()) == []


@needs_reference
def test_helm_key_check_catches_unknown_keys() -> None:
    b = bundle()
    b.helm_values["connectInject"]["transparentProxy"]["enabled"] = False
    b.helm_values["global"]["enterpriseLicence"] = {"secretName": "x"}
    b.helm_values["server"]["extraLabels"] = {"free": "form"}  # documented free-form map: fine
    problems = checks.unknown_helm_keys(b.helm_values, _reference_values())
    assert problems == [
        "global.enterpriseLicence: not a key of the chart's values.yaml",
        "connectInject.transparentProxy.enabled: not a key of the chart's values.yaml",
    ]


def test_helm_values_pin_and_place_consul() -> None:
    for edition in ("ce", "enterprise"):
        v = bundle(edition=edition).helm_values
        assert v["global"]["name"] == "consul"
        assert v["global"]["datacenter"] == "us-west-2"
        assert v["global"]["image"].endswith(":1.22.7" if edition == "ce" else ":1.22.7-ent")
        assert v["global"]["imageConsulDataplane"] == "hashicorp/consul-dataplane:1.9.11"
        assert v["server"]["replicas"] == 1
        assert v["connectInject"]["enabled"] is True
        assert v["connectInject"]["default"] is False
        assert v["connectInject"]["transparentProxy"]["defaultEnabled"] is False
        # placement on kind and EKS alike: tests/test_render_entry.py
    ent = bundle(edition="enterprise").helm_values
    assert ent["global"]["image"].startswith("hashicorp/consul-enterprise:")
    assert ent["global"]["enterpriseLicense"]["secretName"]


# -- kind config ---------------------------------------------------------------------
KIND_CLUSTER_KEYS = {"kind", "apiVersion", "name", "nodes", "networking", "featureGates", "runtimeConfig",
                     "kubeadmConfigPatches", "kubeadmConfigPatchesJSON6902", "containerdConfigPatches"}  # fmt: skip
KIND_NODE_KEYS = {"role", "image", "labels", "extraMounts", "extraPortMappings", "kubeadmConfigPatches",
                  "kubeadmConfigPatchesJSON6902"}  # fmt: skip


def _kind_errors(cfg: dict[str, Any]) -> list[str]:
    errors = [f"cluster.{k}" for k in set(cfg) - KIND_CLUSTER_KEYS]
    if cfg.get("apiVersion") != "kind.x-k8s.io/v1alpha4" or cfg.get("kind") != "Cluster":
        errors.append("apiVersion/kind")
    for i, node in enumerate(cfg["nodes"]):
        errors += [f"nodes[{i}].{k}" for k in set(node) - KIND_NODE_KEYS]
        if node.get("role") not in ("control-plane", "worker"):
            errors.append(f"nodes[{i}].role")
    return errors


@pytest.mark.parametrize("topo", list(FIXTURES))
def test_kind_config(topo: str) -> None:
    b = bundle(topo)
    t = b.topology
    assert _kind_errors(b.kind_config) == []
    nodes = kind_nodes(b.kind_config)
    assert [n.name for n in nodes][:2] == [f"{t.name}-control-plane", f"{t.name}-worker"]
    workers = nodes[1:]
    assert len(workers) == sum(z.nodes for z in t.zones)
    for zone in t.zones:
        mine = [n for n in workers if n.labels["topology.kubernetes.io/zone"] == zone.name]
        assert len(mine) == zone.nodes
        for n in mine:
            assert n.labels == {
                "topology.kubernetes.io/region": t.region,
                "topology.kubernetes.io/zone": zone.name,
                "edge-harness.io/zone-type": zone.type.value,
            }
            expected = [Taint("edge-harness.io/edge-zone", zone.name, "NoSchedule")]
            assert list(n.taints) == (expected if zone.is_edge else [])


def test_kind_check_catches_breakage() -> None:
    b = bundle()
    b.kind_config["nodes"][1]["taints"] = []  # kind has no such field: taints go through kubeadm patches
    b.kind_config["nodes"][2]["role"] = "agent"
    assert _kind_errors(b.kind_config) == ["nodes[1].taints", "nodes[2].role"]


# -- the mesh: pure contract checks, each with its negative twin ------------------------
@pytest.mark.parametrize("check", checks.ALL_CHECKS, ids=lambda c: c.__name__)
def test_contract_check_passes(rendered: Bundle, check: Callable[[Bundle], list[str]]) -> None:
    assert check(rendered) == []


def _drop_toleration(b: Bundle) -> None:
    del _pod(b, "public-api-lax-1a", "hashicups-lax-1a")["spec"]["tolerations"]


def _drop_affinity(b: Bundle) -> None:
    del _pod(b, "public-api-2a", "hashicups")["spec"]["affinity"]


def _widen_edge_affinity(b: Bundle) -> None:
    spec = _pod(b, "product-api", "hashicups-lax-1a")["spec"]  # Enterprise: plain names
    spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0][
        "matchExpressions"
    ][0]["values"].append("us-west-2-las-1a")
    spec["tolerations"] = [{"key": "edge-harness.io/edge-zone", "operator": "Exists", "effect": "NoSchedule"}]


def _set_upstreams(deployment: str, ns: str, value: str) -> Callable[[Bundle], None]:
    def mutate(b: Bundle) -> None:
        _pod(b, deployment, ns)["metadata"]["annotations"]["consul.hashicorp.com/connect-service-upstreams"] = value

    return mutate


def _failover_to(resolver: str, ns: str, target: dict[str, str]) -> Callable[[Bundle], None]:
    def mutate(b: Bundle) -> None:
        b.find("ServiceResolver", resolver, ns)["spec"]["failover"]["*"]["targets"] = [target]

    return mutate


def _remove(kind: str, name: str, ns: str | None = None) -> Callable[[Bundle], None]:
    return lambda b: b.remove(kind, name, ns)


def _add_source(dest: str, ns: str, source: dict[str, str]) -> Callable[[Bundle], None]:
    return lambda b: b.find("ServiceIntentions", dest, ns)["spec"]["sources"].insert(0, source)


def _drop_source(dest: str, ns: str, index: int) -> Callable[[Bundle], None]:
    return lambda b: b.find("ServiceIntentions", dest, ns)["spec"]["sources"].pop(index)


def _set(path: list[Any], value: Any, kind: str, name: str, ns: str | None = None) -> Callable[[Bundle], None]:
    def mutate(b: Bundle) -> None:
        node: Any = b.find(kind, name, ns)
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = value

    return mutate


def _duplicate(kind: str, name: str, ns: str, new_ns: str) -> Callable[[Bundle], None]:
    def mutate(b: Bundle) -> None:
        dup = copy.deepcopy(b.find(kind, name, ns))
        dup["metadata"]["namespace"] = new_ns
        b.objects.append(dup)

    return mutate


def _helm(path: list[str], value: Any) -> Callable[[Bundle], None]:
    def mutate(b: Bundle) -> None:
        node = b.helm_values
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value

    return mutate


LAX = "hashicups-lax-1a"
NEGATIVE = [
    # scheduling
    ("ce", checks.check_scheduling, _drop_toleration, "fits no node"),
    ("ce", checks.check_scheduling, _drop_affinity, "can be placed on edge-worker2 in us-west-2b"),
    ("enterprise", checks.check_scheduling, _widen_edge_affinity, "can be placed on edge-worker4 in us-west-2-las-1a"),
    # upstreams
    ("ce", checks.check_upstreams, _set_upstreams("frontend-lax-1a", LAX, "public-api-nowhere:8080"), "no Service"),
    ("ce", checks.check_upstreams, _remove("ServiceDefaults", "postgres"), "no ServiceDefaults"),
    ("ce", checks.check_upstreams, _set_upstreams("public-api-lax-1a", LAX, "product-api-lax-1a"), "is not <name>"),
    ("enterprise", checks.check_upstreams, _remove("ServiceDefaults", "postgres", LAX), "no ServiceDefaults"),
    ("enterprise", checks.check_upstreams, _set(["spec", "redirect", "service"], "products-db",
     "ServiceResolver", "postgres", LAX), "no Service with pods for ('hashicups', 'products-db')"),
    # locality / hub and spoke (the seeded misconfigurations of the design)
    ("ce", checks.check_locality, _failover_to("product-api-lax-1a", LAX, {"service": "product-api-las-1a"}),
     "fails over to ('default', 'product-api-las-1a') outside the Region"),
    ("ce", checks.check_locality, _remove("ServiceResolver", "product-api-lax-1a"), "no failover to the Region"),
    ("ce", checks.check_locality, _set_upstreams("public-api-lax-1a", LAX, "product-api:9090"),
     "skips its own zone's copy"),
    ("ce", checks.check_locality, _set_upstreams("public-api-lax-1a", LAX, "product-api-phx-2a:9090"),
     "goes to ['us-west-2-phx-2a']"),
    ("enterprise", checks.check_locality,
     _failover_to("product-api", LAX, {"service": "product-api", "namespace": "hashicups-las-1a"}),
     "outside the Region"),
    ("enterprise", checks.check_locality, _set(["spec"], {"redirect": {"service": "product-api", "namespace":
     "hashicups-las-1a"}}, "ServiceResolver", "product-api", LAX), "goes to ['us-west-2-las-1a']"),
    # intentions
    ("ce", checks.check_intentions, _add_source("product-api", "hashicups", {"name": "frontend-lax-1a",
     "action": "allow"}), "beyond the call graph: ('default', 'frontend-lax-1a')"),
    ("ce", checks.check_intentions, _drop_source("postgres", "hashicups", 1), "intention missing"),
    ("ce", checks.check_intentions, _drop_source("product-api-lax-1a", LAX, -1), "no `*` deny"),
    ("ce", checks.check_intentions, _remove("ServiceIntentions", "frontend"), "no ServiceIntentions"),
    ("enterprise", checks.check_intentions, _set(["spec", "sources", 0, "namespace"], "hashicups-las-1a",
     "ServiceIntentions", "product-api", LAX), "intention missing: ('hashicups-lax-1a', 'public-api')"),
    # CE must not use Enterprise-only fields
    ("ce", checks.check_ce_fields, _set(["spec", "failover", "*", "targets", 0, "namespace"], "hashicups",
     "ServiceResolver", "product-api-lax-1a"), "Enterprise-only"),
    ("ce", checks.check_ce_fields, _set(["spec", "prioritizeByLocality"], {"mode": "failover"},
     "ServiceResolver", "product-api-lax-1a"), "prioritizeByLocality is Enterprise-only"),
    ("ce", checks.check_ce_fields, _set(["spec", "failover", "*", "policy"], {"mode": "order-by-locality"},
     "ServiceResolver", "product-api-lax-1a"), "failover policy"),
    ("ce", checks.check_ce_fields, _set_upstreams("product-api-lax-1a", LAX, "postgres.hashicups:5432"),
     "namespaced upstreams are Enterprise-only"),
    ("ce", checks.check_ce_fields, _helm(["global", "enableConsulNamespaces"], True), "Enterprise-only"),
    # config-entry names
    ("ce", checks.check_unique_names, _duplicate("ServiceDefaults", "postgres", "hashicups", LAX), "clashes"),
    ("enterprise", checks.check_unique_names, _duplicate("ServiceRouter", "public-api", LAX, LAX), "clashes"),
    # Enterprise namespaces
    ("enterprise", checks.check_enterprise_namespaces, _helm(["connectInject", "consulNamespaces", "mirroringK8S"],
     False), "mirroringK8S"),
    ("enterprise", checks.check_enterprise_namespaces, _remove("ServiceResolver", "postgres", LAX),
     "hashicups-lax-1a: postgres is not redirected"),
    ("enterprise", checks.check_enterprise_namespaces, _set(["spec", "template", "metadata", "annotations",
     "consul.hashicorp.com/connect-service"], "public-api-lax-1a", "Deployment", "public-api", LAX),
     "is not the plain service name"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("edition", "check", "mutate", "expected"),
    NEGATIVE,
    ids=[f"{c.__name__}-{i}" for i, (_, c, _m, _e) in enumerate(NEGATIVE)],
)
def test_contract_check_catches_breakage(
    edition: str, check: Callable[[Bundle], list[str]], mutate: Callable[[Bundle], None], expected: str
) -> None:
    b = bundle("default", edition)
    assert check(b) == []
    mutate(b)
    problems = check(b)
    assert any(expected in p for p in problems), problems


def test_enterprise_same_names_in_different_namespaces_are_fine() -> None:
    b = bundle("default", "enterprise")
    names = [o["metadata"]["name"] for o in b.objects if o["kind"] == "ServiceResolver"]
    assert len(names) > len(set(names))  # plain names repeat across zone namespaces...
    assert checks.check_unique_names(b) == []  # ...which Consul namespaces make legal


# -- naming and pod contents (docs/CONTRACTS.md §2, §5) ------------------------------------
def test_ce_naming() -> None:
    b = bundle()
    dep = b.find("Deployment", "product-api-lax-1a", LAX)
    pod = dep["spec"]["template"]
    assert pod["metadata"]["labels"] == {
        "app": "product-api",
        "edge-harness.io/consul-service": "product-api-lax-1a",
        "edge-harness.io/zone": "us-west-2-lax-1a",
        "edge-harness.io/serving": "true",
    }
    # the serving label selects the pod into its Service but is not part of the Deployment selector
    dep_sel = dep["spec"]["selector"]["matchLabels"]
    assert "edge-harness.io/serving" not in dep_sel and dep_sel.items() <= pod["metadata"]["labels"].items()
    assert pod["metadata"]["annotations"]["consul.hashicorp.com/connect-inject"] == "true"
    assert pod["metadata"]["annotations"]["consul.hashicorp.com/connect-service"] == "product-api-lax-1a"
    assert pod["metadata"]["annotations"]["consul.hashicorp.com/connect-service-upstreams"] == "postgres:5432"
    assert pod["spec"]["serviceAccountName"] == "product-api-lax-1a"
    b.find("Service", "product-api-lax-1a", LAX)
    b.find("ServiceAccount", "product-api-lax-1a", LAX)
    for az in ("2a", "2b"):
        region = b.find("Deployment", f"product-api-{az}", "hashicups")["spec"]["template"]
        assert region["metadata"]["labels"]["edge-harness.io/consul-service"] == "product-api"
        assert region["metadata"]["labels"]["edge-harness.io/zone"] == f"us-west-2{az[-1]}"
    assert b.find("Service", "product-api", "hashicups")["spec"]["selector"] == {
        "app": "product-api",
        "edge-harness.io/consul-service": "product-api",
        "edge-harness.io/serving": "true",
    }
    frontend = b.find("Deployment", "frontend-lax-1a", LAX)["spec"]["template"]["metadata"]["annotations"]
    assert frontend["consul.hashicorp.com/connect-service-upstreams"] == "public-api-lax-1a:8080"
    resolver = b.find("ServiceResolver", "product-api-lax-1a", LAX)["spec"]
    assert resolver["failover"] == {"*": {"targets": [{"service": "product-api"}]}}
    assert resolver["connectTimeout"] == "2s"
    namespaces = [o["metadata"]["name"] for o in b.objects if o["kind"] == "Namespace"]
    assert namespaces == ["consul", "hashicups", LAX, "hashicups-las-1a", "hashicups-phx-2a", "hashicups-wl1-sfo-wlz-1"]


def test_enterprise_naming() -> None:
    b = bundle("default", "enterprise")
    pod = b.find("Deployment", "public-api", LAX)["spec"]["template"]
    assert pod["metadata"]["annotations"]["consul.hashicorp.com/connect-service"] == "public-api"
    assert pod["metadata"]["annotations"]["consul.hashicorp.com/connect-service-upstreams"] == f"product-api.{LAX}:9090"
    product = b.find("Deployment", "product-api", LAX)["spec"]["template"]["metadata"]["annotations"]
    assert product["consul.hashicorp.com/connect-service-upstreams"] == f"postgres.{LAX}:5432"
    assert b.find("ServiceResolver", "postgres", LAX)["spec"] == {
        "redirect": {"service": "postgres", "namespace": "hashicups"}
    }
    assert b.find("ServiceResolver", "product-api", LAX)["spec"]["failover"] == {
        "*": {"targets": [{"service": "product-api", "namespace": "hashicups"}]}
    }
    b.find("Deployment", "product-api-2b", "hashicups")


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def test_pod_contents_follow_contract() -> None:
    b = bundle()
    front = _pod(b, "frontend-lax-1a", LAX)["spec"]
    by_name = {c["name"]: c for c in front["containers"]}
    assert _env(by_name["frontend"]) == {"NEXT_PUBLIC_PUBLIC_API_URL": "/"}
    assert by_name["nginx"]["ports"] == [{"name": "http", "containerPort": 80}]
    assert by_name["nginx"]["volumeMounts"][0]["mountPath"] == "/etc/nginx/conf.d"
    conf = b.find("ConfigMap", "frontend-lax-1a-nginx", LAX)["data"]["nginx.conf"]
    assert "location /api {\n        proxy_pass http://127.0.0.1:8080;" in conf
    assert "location / {\n        proxy_pass http://127.0.0.1:3000;" in conf
    assert b.find("Service", "frontend-lax-1a", LAX)["spec"]["ports"][0]["port"] == 80

    public = _pod(b, "public-api-lax-1a", LAX)["spec"]["containers"][0]
    assert _env(public) == {"BIND_ADDRESS": ":8080", "PRODUCT_API_URI": "http://localhost:9090"}
    # v0.0.7's GET /health needs payments (never deployed): probe the port the image opens at once
    assert public["readinessProbe"] == {"tcpSocket": {"port": 8080}, "periodSeconds": 1, "failureThreshold": 2}
    assert public["livenessProbe"]["tcpSocket"] == {"port": 8080}
    assert "startupProbe" not in public

    product = _pod(b, "product-api-lax-1a", LAX)["spec"]["containers"][0]
    assert _env(product) == {"CONFIG_FILE": "/config/conf.json"}
    assert product["volumeMounts"][0]["mountPath"] == "/config"
    assert product["readinessProbe"]["httpGet"]["path"] == "/health/readyz"
    assert product["livenessProbe"]["httpGet"]["path"] == "/health/livez"
    # the image waits up to 60 s for postgres before it listens: the startup budget outlasts that
    startup = product["startupProbe"]
    assert startup["httpGet"] == {"path": "/health/livez", "port": 9090}
    assert startup["periodSeconds"] * startup["failureThreshold"] > 60
    conf_json = yaml.safe_load(b.find("ConfigMap", "product-api-lax-1a-config", LAX)["data"]["conf.json"])
    assert conf_json == {
        "db_connection": "host=localhost port=5432 user=postgres password=password dbname=products sslmode=disable",
        "bind_address": ":9090",
        "metrics_address": ":9103",
    }

    pg = _pod(b, "postgres-2a", "hashicups")["spec"]["containers"][0]
    assert pg["image"].startswith("hashicorpdemoapp/product-api-db:")
    assert _env(pg) == {"POSTGRES_DB": "products", "POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": "password"}
    assert pg["readinessProbe"]["tcpSocket"] == {"port": 5432}
    assert pg["startupProbe"]["tcpSocket"] == {"port": 5432}
    for o in b.objects:
        if o["kind"] == "Deployment":
            for c in o["spec"]["template"]["spec"]["containers"]:
                assert c["resources"]["requests"], (o["metadata"]["name"], c["name"])


# Field list of docs/CONTRACTS.md §4 (accesslogs/<pod>.jsonl): observe parses exactly these.
CONTRACT_ACCESS_LOG_FIELDS = [
    "start_time",
    "route_name",
    "method",
    "path",
    "protocol",
    "response_code",
    "response_flags",
    "response_code_details",
    "connection_termination_details",
    "bytes_received",
    "bytes_sent",
    "duration",
    "upstream_service_time",
    "x_forwarded_for",
    "user_agent",
    "request_id",
    "authority",
    "upstream_host",
    "upstream_cluster",
    "upstream_local_address",
    "downstream_local_address",
    "downstream_remote_address",
    "downstream_direct_remote_address",
    "requested_server_name",
    "upstream_transport_failure_reason",
]


def test_proxy_defaults_access_logs() -> None:
    spec = bundle().find("ProxyDefaults", "global", "consul")["spec"]
    assert spec["config"] == {"protocol": "http"}
    assert spec["accessLogs"]["enabled"] is True
    fields = yaml.safe_load(spec["accessLogs"]["jsonFormat"])
    assert list(fields) == CONTRACT_ACCESS_LOG_FIELDS
    assert fields == ACCESS_LOG_FIELDS
    assert all(v.startswith("%") and v.endswith("%") for v in fields.values())


def test_service_defaults() -> None:
    b = bundle()
    assert b.find("ServiceDefaults", "postgres")["spec"] == {"protocol": "tcp"}
    caller = b.find("ServiceDefaults", "public-api-lax-1a")["spec"]
    assert caller["protocol"] == "http"
    assert caller["upstreamConfig"]["defaults"]["passiveHealthCheck"] == {
        "interval": "1s",
        "maxFailures": 2,
        "enforcingConsecutive5xx": 100,
        "maxEjectionPercent": 100,
        "baseEjectionTime": "5s",
    }
    assert caller["upstreamConfig"]["defaults"]["connectTimeoutMs"] == 2000
    # a request's own retries must be able to eject a dead host and reach the failover target
    router = b.find("ServiceRouter", "product-api-lax-1a")["spec"]["routes"][0]["destination"]
    assert caller["upstreamConfig"]["defaults"]["passiveHealthCheck"]["maxFailures"] <= router["numRetries"]


def _replicas(b: Bundle, app: str) -> dict[str, int]:
    out = {}
    for o in b.objects:
        if o["kind"] == "Deployment" and o["spec"]["template"]["metadata"]["labels"]["app"] == app:
            out[o["spec"]["template"]["metadata"]["labels"]["edge-harness.io/zone"]] = o["spec"]["replicas"]
    return out


def test_replica_placement() -> None:
    wide = bundle("wide")
    assert _replicas(wide, "product-api") == {z.name: 2 for z in wide.topology.zones}
    assert _replicas(wide, "postgres") == {"us-west-2a": 1}  # 1 in total: no empty Deployment in us-west-2b
    data = yaml.safe_load(FIXTURES["default"].read_text())
    data["services"][3]["replicas"] = 3
    data["zones"].insert(2, {"name": "us-west-2c", "type": "availability-zone"})
    data["zones"][2]["nodes"] = 1
    data["services"][3]["replicas"] = 5
    data["services"] = data["services"][:4]  # no AZ left for a read replica: see test_read_replica_*
    t = Topology.model_validate(data)
    r = render(t)
    b = Bundle(t, r.kind_config, r.helm_values, r.objects)
    assert _replicas(b, "postgres") == {"us-west-2a": 2, "us-west-2b": 2, "us-west-2c": 1}
    assert checks.check_all(b) == []


def _registration_problems(objects: list[dict[str, Any]]) -> list[str]:
    """Injected pods more than one Service selects must name their own (consul-k8s `kubernetes-service`)."""
    from harness.contract import names

    services = [o for o in objects if o["kind"] == "Service" and (o.get("spec") or {}).get("selector")]
    out = []
    for d in (o for o in objects if o["kind"] == "Deployment"):
        tmpl = d["spec"]["template"]
        ann, labels = tmpl["metadata"].get("annotations") or {}, tmpl["metadata"].get("labels") or {}
        if ann.get(names.ANN_INJECT) != "true":
            continue
        selecting = sorted(
            s["metadata"]["name"]
            for s in services
            if s["metadata"].get("namespace") == d["metadata"].get("namespace")
            and all(labels.get(k) == v for k, v in s["spec"]["selector"].items())
        )
        own = ann.get(names.ANN_K8S_SERVICE)
        if len(selecting) > 1 and own not in selecting:
            out.append(f"{d['metadata']['name']}: selected by {selecting}, kubernetes-service {own!r}")
        if own is not None and own != ann.get(names.ANN_SERVICE):
            out.append(f"{d['metadata']['name']}: kubernetes-service {own!r} is not its Consul service")
    return out


@pytest.mark.parametrize(("topo", "edition"), CASES)
def test_pods_several_services_select_name_the_one_that_registers_them(topo: str, edition: str) -> None:
    """A zone's frontend is selected by its own Service and the zone's entry Service (both entry variants):
    consul-k8s' endpoints controller must register it from its own only (endpoints_controller.go, v1.9.11)."""
    r = _rendered(topo, edition)
    for variant, entry in r.entry.items():
        objects = [*r.objects, *entry]
        assert _registration_problems(objects) == [], variant
        # the negative twin: without the annotation the frontends are registered from both
        bare = copy.deepcopy(objects)
        for o in bare:
            if o["kind"] == "Deployment":
                o["spec"]["template"]["metadata"]["annotations"].pop("consul.hashicorp.com/kubernetes-service")
        problems = _registration_problems(bare)
        assert problems and all("frontend" in p for p in problems), problems


def _pinned_problems(objects: list[dict[str, Any]], key: str) -> list[str]:
    """Meshed pods (connect-inject "true") must pin `key` to names.PINNED_MESH_ANNOTATIONS' value: an operator's
    Consul keeps its own defaults (transparent proxy on in chart v1.9.11, Envoy's 10 s access-log flush without the
    harness's envoyExtraArgs, consul-dataplane as an init container if turned on), and only the pod annotation wins
    over them. Pods outside the mesh need not say anything."""
    from harness.contract import names

    out = []
    for d in (o for o in objects if o["kind"] == "Deployment"):
        ann = d["spec"]["template"]["metadata"].get("annotations") or {}
        if ann.get(names.ANN_INJECT) == "true" and ann.get(key) != names.PINNED_MESH_ANNOTATIONS[key]:
            out.append(f"{d['metadata']['name']}: {key} {ann.get(key)!r}")
    return out


@pytest.mark.parametrize(("topo", "edition"), CASES)
def test_meshed_pods_pin_what_an_operators_consul_may_default_otherwise(topo: str, edition: str) -> None:
    from harness.contract import names

    r = _rendered(topo, edition)
    deployments = [o for o in r.objects if o["kind"] == "Deployment"]
    assert deployments
    for key, pinned in names.PINNED_MESH_ANNOTATIONS.items():
        assert _pinned_problems(r.objects, key) == []
        # the negative twins: a meshed pod without it, or with another value, is named; a pod outside the mesh is not
        for value in (None, pinned + "x"):
            broken = copy.deepcopy(r.objects)
            dep = next(o for o in broken if o["kind"] == "Deployment")
            ann = dep["spec"]["template"]["metadata"]["annotations"]
            ann.pop(key)
            if value is not None:
                ann[key] = value
            assert _pinned_problems(broken, key) == [f"{dep['metadata']['name']}: {key} {value!r}"]
            ann[names.ANN_INJECT] = "false"
            assert _pinned_problems(broken, key) == []

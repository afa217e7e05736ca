"""The EKS nightly's Kubernetes identity, shipped as data (deploy/eks-nightly-rbac.yaml), and the fake that enforces it.

Why: the README once listed the identity in prose, the fake API server
allowed everything, and a ClusterRole written from that list was refused
(HTTP 403) at the first ServiceAccount `up` applies. Now the role is a file
an operator applies as it is, and every existing-backend test runs its
context under exactly that role (`tests.test_backend_existing._backend` and
`_cluster`, the nightly flow in `tests.test_flows` included): a call the code
makes that the role does not grant fails a test. Here: the authorizer model
itself (attributes and rule matching as kube-apiserver has them), the shipped
files, and that taking one needed rule out of the role does fail a run,
naming the rule, also where the harness swallows the 403.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.errors import BackendError
from tests.conftest import REPO, wait_until
from tests.kubefake import FakeApiServer, rendered
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.kuberbac import (
    INSTALL_CONSUL_RBAC,
    NIGHTLY_GROUP,
    NIGHTLY_RBAC,
    allowed,
    bound_rules,
    forbidden_message,
    nightly_rules,
    request_info,
    rule_allows,
    without,
)
from tests.test_backend_existing import CONTEXT, _backend, _cluster, _helm_tools

# -- the authorizer model (no server) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "params", "want"),
    [
        ("GET", "/api/v1/pods", {}, ("list", "", "pods", "", "")),
        ("GET", "/api/v1/pods", {"watch": "true"}, ("watch", "", "pods", "", "")),
        ("GET", "/api/v1/pods", {"fieldSelector": "metadata.name=pa-1"}, ("list", "", "pods", "", "pa-1")),
        ("GET", "/api/v1/namespaces/ns/pods/pa-1", {}, ("get", "", "pods", "ns", "pa-1")),
        ("GET", "/api/v1/namespaces/ns/pods/pa-1/log", {"follow": "true"}, ("get", "", "pods/log", "ns", "pa-1")),
        ("POST", "/api/v1/namespaces/ns/pods/pa-1/portforward", {}, ("create", "", "pods/portforward", "ns", "pa-1")),
        ("POST", "/api/v1/namespaces/ns/serviceaccounts", {}, ("create", "", "serviceaccounts", "ns", "")),
        ("PATCH", "/apis/apps/v1/namespaces/ns/deployments/d", {}, ("patch", "apps", "deployments", "ns", "d")),
        ("PUT", "/apis/consul.hashicorp.com/v1alpha1/namespaces/consul/proxydefaults/global", {},
         ("update", "consul.hashicorp.com", "proxydefaults", "consul", "global")),
        ("DELETE", "/apis/networking.k8s.io/v1/namespaces/ns/networkpolicies/p", {},
         ("delete", "networking.k8s.io", "networkpolicies", "ns", "p")),
        ("DELETE", "/api/v1/namespaces/ns/pods", {}, ("deletecollection", "", "pods", "ns", "")),
        ("GET", "/api/v1/namespaces/ns", {}, ("get", "", "namespaces", "ns", "ns")),
        ("GET", "/api/v1/namespaces", {}, ("list", "", "namespaces", "", "")),
        ("PATCH", "/api/v1/nodes/n1", {}, ("patch", "", "nodes", "", "n1")),
        ("GET", "/api/v1/watch/namespaces/ns/pods", {}, ("watch", "", "pods", "ns", "")),
    ],
)  # fmt: skip
def test_request_attributes_are_what_kube_apiserver_derives(
    method: str, path: str, params: dict[str, str], want: tuple[str, str, str, str, str]
) -> None:
    info = request_info(method, path, params)
    assert info.resource_request
    assert (info.verb, info.group, info.combined, info.namespace, info.name) == want


@pytest.mark.parametrize("path", ["/version", "/api", "/api/v1", "/apis", "/apis/apps/v1", "/openapi/v2"])
def test_discovery_and_version_are_non_resource_and_every_identity_has_them(path: str) -> None:
    info = request_info("GET", path)
    assert not info.resource_request and info.verb == "get"
    assert allowed([], info)  # system:discovery, system:public-info-viewer
    assert not allowed([], request_info("GET", "/metrics"))
    assert forbidden_message(request_info("GET", "/metrics"), "u") == 'forbidden: User "u" cannot get path "/metrics"'


def test_rules_match_as_rbac_does() -> None:
    log = request_info("GET", "/api/v1/namespaces/ns/pods/p/log")
    assert not rule_allows({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}, log)  # not a subresource
    assert rule_allows({"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}, log)
    assert rule_allows({"apiGroups": [""], "resources": ["*/log"], "verbs": ["*"]}, log)
    assert not rule_allows({"apiGroups": ["apps"], "resources": ["pods/log"], "verbs": ["get"]}, log)
    named = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"], "resourceNames": ["p"]}
    assert rule_allows(named, request_info("GET", "/api/v1/namespaces/ns/pods/p"))
    assert not rule_allows(named, request_info("GET", "/api/v1/namespaces/ns/pods/q"))
    assert not rule_allows(named, request_info("GET", "/api/v1/namespaces/ns/pods"))  # a list names nothing
    assert rule_allows(named, request_info("GET", "/api/v1/pods", {"fieldSelector": "metadata.name=p"}))
    assert not rule_allows({"nonResourceURLs": ["*"], "verbs": ["*"]}, log)  # URL rules are not resource rules
    sa = request_info("POST", "/api/v1/namespaces/hashicups/serviceaccounts")
    assert forbidden_message(sa, "edge-harness") == (
        'serviceaccounts is forbidden: User "edge-harness" cannot create resource "serviceaccounts" in API group "" '
        'in the namespace "hashicups"'
    )


def test_without_takes_out_exactly_one_grant() -> None:
    rules = [{"apiGroups": [""], "resources": ["namespaces", "serviceaccounts"], "verbs": ["create", "delete"]}]
    left = without(rules, "", "serviceaccounts", "create")
    sa = "/api/v1/namespaces/ns/serviceaccounts"
    assert not allowed(left, request_info("POST", sa))
    assert allowed(left, request_info("DELETE", f"{sa}/x"))
    assert allowed(left, request_info("POST", "/api/v1/namespaces"))


# -- the shipped files -------------------------------------------------------------------------------


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def test_the_nightly_role_is_least_privilege_data_an_operator_applies_as_it_is() -> None:
    """No wildcard, no Secret but the TLS Consul's CA by name, no RBAC objects, no evictions: the role names
    what the code calls."""
    docs = _docs(NIGHTLY_RBAC)
    assert sorted(d["kind"] for d in docs) == ["ClusterRole", "ClusterRoleBinding"]
    rules = nightly_rules()
    assert rules == bound_rules(docs, group=NIGHTLY_GROUP) and rules
    for r in rules:
        assert "*" not in [*r["apiGroups"], *r["resources"], *r["verbs"]], r
        assert not {"pods/exec", "pods/eviction", "clusterroles"} & set(r["resources"]), r
        if "secrets" in r["resources"]:  # only the CA certificate, by name (KubeBackend._consul_ca)
            assert (r["resources"], r.get("resourceNames"), r["verbs"]) == (["secrets"], ["consul-ca-cert"], ["get"])
        assert "rbac.authorization.k8s.io" not in r["apiGroups"], r
    assert bound_rules(docs, group="someone-else") == []


def test_install_consul_adds_cluster_admin_and_says_why() -> None:
    """helm installs CRDs, ClusterRoles and a webhook: the file binds cluster-admin, on purpose and in the open."""
    (binding,) = _docs(INSTALL_CONSUL_RBAC)
    assert binding["kind"] == "ClusterRoleBinding" and binding["roleRef"]["name"] == "cluster-admin"
    text = INSTALL_CONSUL_RBAC.read_text(encoding="utf-8")
    assert "escalate" in text and "MutatingWebhookConfiguration" in text
    secrets = request_info("GET", "/api/v1/namespaces/consul/secrets")
    assert allowed(nightly_rules(install_consul=True), secrets) and not allowed(nightly_rules(), secrets)
    token = request_info("GET", "/api/v1/namespaces/consul/secrets/consul-bootstrap-acl-token")
    ca = request_info("GET", "/api/v1/namespaces/consul/secrets/consul-ca-cert")
    assert allowed(nightly_rules(), ca) and not allowed(nightly_rules(), token)


def test_the_readme_points_at_the_files_instead_of_listing_the_identity() -> None:
    section = (REPO / "README.md").read_text(encoding="utf-8").split("## Run against EKS", 1)[1].split("\n## ", 1)[0]
    assert f"kubectl apply -f {NIGHTLY_RBAC.relative_to(REPO)}" in section
    assert str(INSTALL_CONSUL_RBAC.relative_to(REPO)) in section


# -- the role enforced on a run ----------------------------------------------------------------------


@pytest.fixture
def tools(api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fake kubectl on PATH: `up` reaches Consul's API through a port-forward before it applies anything."""
    for k in ("CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE", "CONSUL_CACERT"):
        monkeypatch.delenv(k, raising=False)
    return _helm_tools(tmp_path, api, monkeypatch)


@pytest.mark.slow
@pytest.mark.usefixtures("tools")
def test_a_role_missing_one_rule_fails_up_naming_that_rule(api: FakeApiServer, tmp_path: Path) -> None:
    """The defect the README's prose list had: no ServiceAccount create. `up` stops at the first one, saying why."""
    _cluster(api, tmp_path)
    b = _backend(api, tmp_path)
    api.grant(CONTEXT, without(nightly_rules(), "", "serviceaccounts", "create"))
    with pytest.raises(BackendError) as err:
        b.up(rendered(tmp_path))
    b.close()
    refusal = 'cannot create resource "serviceaccounts" in API group "" in the namespace "hashicups'
    assert "cannot create ServiceAccount hashicups" in str(err.value) and "HTTP 403" in str(err.value)
    assert refusal in str(err.value)
    assert len(api.sim.rbac_denials) == 1 and refusal in api.sim.rbac_denials[0]


@pytest.mark.slow
@pytest.mark.usefixtures("tools")
def test_a_403_the_harness_swallows_is_still_caught(api: FakeApiServer, tmp_path: Path) -> None:
    """Without `watch pods` `up` succeeds: the inventory watch retries its 403 quietly (as it does any API hiccup),
    and the pod history would be relists only. The fake's record of refusals is what the flows assert empty."""
    _cluster(api, tmp_path)
    b = _backend(api, tmp_path)
    api.grant(CONTEXT, without(nightly_rules(), "", "pods", "watch"))
    try:
        b.up(rendered(tmp_path))
        assert wait_until(lambda: bool(api.sim.rbac_denials), 30)
    finally:
        b.close()
    watch = 'pods is forbidden: User "edge-harness" cannot watch resource "pods" in API group "" at the cluster scope'
    assert watch in api.sim.rbac_denials


@pytest.mark.slow
def test_port_forward_needs_get_and_from_kubernetes_1_35_create_on_pods_portforward(
    api: FakeApiServer, tmp_path: Path
) -> None:
    """kubectl >= 1.31 forwards over a WebSocket (a GET); 1.35 API servers check `create` too (the SPDY verb)."""
    _cluster(api, tmp_path)  # the operator's Consul: its UI Service is what preflight forwards to
    token = api.token(CONTEXT)

    def forward() -> dict[str, Any]:
        return dict(api.sim.call(lambda: api.sim._resolve_forward("consul", "svc/consul-ui", 80, token)))

    api.grant(CONTEXT, nightly_rules())
    assert "error" not in forward()
    api.grant(CONTEXT, without(nightly_rules(), "", "pods/portforward", "create"))
    assert "error" not in forward()  # 1.31: the WebSocket upgrade is authorized as `get` alone
    api.sim.server_version = {"major": "1", "minor": "35", "gitVersion": "v1.35.0-eks-1234567"}
    assert 'cannot create resource "pods/portforward"' in forward()["error"]
    api.grant(CONTEXT, nightly_rules())
    assert "error" not in forward()
    api.grant(CONTEXT, without(nightly_rules(), "", "services", "get"))
    assert forward()["error"].startswith('Error from server (Forbidden): services "consul-ui" is forbidden')

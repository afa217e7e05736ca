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
naming the rule, up front; a refused pod watch becomes a gap of the run's records.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import pytest
import yaml

from harness.backends.kube.permissions import SSAR_PATH, Mode, grants, review
from harness.errors import BackendError
from tests.conftest import REPO, wait_until
from tests.kubefake import FakeApiServer, fake_tools, rendered
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.kuberbac import (
    INSTALL_CONSUL_RBAC,
    NIGHTLY_GROUP,
    NIGHTLY_RBAC,
    RequestInfo,
    allowed,
    bound_rules,
    forbidden_message,
    nightly_rules,
    request_info,
    rule_allows,
    without,
)
from tests.test_backend_existing import CONTEXT, _backend, _cluster

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
    return fake_tools(api, tmp_path, monkeypatch, ("CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE", "CONSUL_CACERT"))


@pytest.mark.slow
@pytest.mark.usefixtures("tools")
def test_a_role_missing_one_rule_fails_up_naming_that_rule(api: FakeApiServer, tmp_path: Path) -> None:
    """The defect the README's prose list had: no ServiceAccount create. `up` used to stop at the first one,
    after the namespaces were applied; now it asks first and refuses in one line, nothing applied."""
    _cluster(api, tmp_path)
    b = _backend(api, tmp_path)
    api.grant(CONTEXT, without(nightly_rules(), "", "serviceaccounts", "create"))
    before = api.writes()
    with pytest.raises(BackendError) as err:
        b.up(rendered(tmp_path))
    b.close()
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"context {CONTEXT} may not: create serviceaccounts (hashicups")
    assert text.endswith("- see deploy/eks-nightly-rbac.yaml (nothing was changed)")
    assert "hashicups-lax-1a" in text.split("create serviceaccounts (", 1)[1].split(")", 1)[0]
    assert text.count("), ") == 0  # that one permission, in every namespace it is needed in
    assert api.writes() == before  # nothing applied
    assert api.sim.rbac_denials == []  # asked, never refused
    assert not (tmp_path / "wd" / f"existing-{CONTEXT}" / "state.json").exists()  # not even the manifests' path


@pytest.mark.slow
@pytest.mark.usefixtures("tools")
def test_every_missing_permission_is_named_in_one_line(api: FakeApiServer, tmp_path: Path) -> None:
    _cluster(api, tmp_path)
    b = _backend(api, tmp_path)
    rules = without(without(nightly_rules(), "", "serviceaccounts", "create"), "", "pods", "watch")
    api.grant(CONTEXT, without(rules, "apps", "deployments", "list"))
    before = api.writes()
    with pytest.raises(BackendError) as err:
        b.up(rendered(tmp_path))
    b.close()
    text = str(err.value)
    assert "watch pods (cluster)" in text and "list deployments.apps (cluster)" in text
    assert "create serviceaccounts (hashicups" in text and "\n" not in text
    assert api.writes() == before


def test_the_shipped_role_grants_exactly_what_the_code_asks_for() -> None:
    """`NEEDS` (what `up` checks) and deploy/eks-nightly-rbac.yaml (what an operator applies) are one list."""
    every_mode = Mode(destructive=True, own_mesh_defaults=True, consul_ca=True)
    shipped = {
        (g, res, v, tuple(r.get("resourceNames") or ()))
        for r in nightly_rules()
        for g in r["apiGroups"]
        for res in r["resources"]
        for v in r["verbs"]
    }
    assert grants(every_mode) == shipped
    install_only = grants(Mode(install_consul=True)) - grants(Mode())
    assert install_only
    for group, res, verb, _names in install_only:
        info = RequestInfo(True, verb, "", group, "consul", *res.partition("/")[::2], "")
        assert allowed(nightly_rules(install_consul=True), info) and not allowed(nightly_rules(), info), info


def _asked(api: FakeApiServer) -> list[str]:
    return [f"{i.verb} {i.combined} {i.namespace} {i.name}".strip() for i in api.sim.access_reviews]


@pytest.mark.usefixtures("tools")
def test_the_permissions_of_a_run_are_asked_where_they_are_used(api: FakeApiServer, tmp_path: Path) -> None:
    """Applied kinds in their namespaces, the pods' rights in the Deployments' ones, cluster-wide lists at the
    cluster scope; node cordons only where destructive chaos is allowed; the fake answers from the role."""
    _cluster(api, tmp_path)
    m = rendered(tmp_path)
    b = _backend(api, tmp_path)
    asked = [str(p) for p in b.permissions_needed(m)]
    assert "watch pods (cluster)" in asked and "list nodes (cluster)" in asked
    assert "list deployments.apps (cluster)" in asked and "create namespaces (cluster)" in asked
    assert "create serviceaccounts (hashicups-lax-1a)" in asked and "get pods/log (hashicups-lax-1a)" in asked
    assert "create pods/portforward (consul)" in asked and "get services (consul)" in asked
    assert not [a for a in asked if a.startswith("patch nodes") or "secrets" in a]  # no allow-list, plain HTTP
    destructive = [str(p) for p in _backend(api, tmp_path, allow=(CONTEXT,)).permissions_needed(m)]
    assert "patch nodes (cluster)" in destructive
    # a node kill deletes every pod of the node, whatever its namespace (a role granting pod delete only in the
    # run's namespaces passed the check and was refused mid-drain)
    assert "delete pods (cluster)" in destructive and "delete pods (cluster)" not in asked
    assert "create networkpolicies.networking.k8s.io (hashicups-lax-1a)" in destructive
    result = review(b.cluster, b.permissions_needed(m))
    assert result.missing == [] and result.asked == len(asked) == len(api.sim.access_reviews)
    assert "watch pods" in _asked(api) and api.sim.rbac_denials == []


@pytest.mark.usefixtures("tools")
def test_the_fake_answers_reviews_as_kube_apiserver_does(api: FakeApiServer, tmp_path: Path) -> None:
    _cluster(api, tmp_path)
    b = _backend(api, tmp_path)
    api.grant(CONTEXT, without(nightly_rules(), "", "pods", "watch"))
    body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"verb": "watch", "resource": "pods"}}}  # fmt: skip
    out = b.cluster.request("POST", SSAR_PATH, body=body)
    assert out["kind"] == "SelfSubjectAccessReview" and out["status"] == {"allowed": False}
    body["spec"]["resourceAttributes"]["verb"] = "list"
    status = b.cluster.request("POST", SSAR_PATH, body=body)["status"]
    assert status["allowed"] is True and status["reason"].startswith("RBAC: allowed by ClusterRoleBinding")
    named = {"verb": "get", "resource": "secrets", "namespace": "consul"}
    for name, want in (("consul-ca-cert", True), ("consul-bootstrap-acl-token", False), ("", False)):
        attrs = {**named, "name": name} if name else named
        got = b.cluster.request("POST", SSAR_PATH, body={"spec": {"resourceAttributes": attrs}})["status"]
        assert got["allowed"] is want, attrs
    assert api.sim.rbac_denials == []


@pytest.mark.usefixtures("tools")
@pytest.mark.parametrize("code", [403, 404])
def test_a_cluster_that_refuses_the_review_itself_gets_a_note_not_a_refusal(
    api: FakeApiServer, tmp_path: Path, code: int
) -> None:
    _cluster(api, tmp_path)
    said: list[str] = []
    b = _backend(api, tmp_path, progress=said.append)
    api.grant(CONTEXT, without(nightly_rules(), "", "serviceaccounts", "create"))
    api.sim.review_refusal = code
    b.check_permissions(rendered(tmp_path))  # no BackendError: each call's own 403 names what is missing
    assert len(said) == 1 and "SelfSubjectAccessReview refused" in said[0] and f"HTTP {code}" in said[0]
    assert "not checked up front" in said[0]


@pytest.mark.slow
@pytest.mark.usefixtures("tools")
def test_a_refused_pod_watch_is_said_and_recorded_as_a_gap_of_the_run(api: FakeApiServer, tmp_path: Path) -> None:
    """Without `watch pods` on a cluster that refuses the up-front review (so `up` cannot tell): the inventory
    watch used to retry its 403 quietly, like any API hiccup, and the pod history became relists only. Now the
    refusal is a warning at once and a gap of the run's records (`record_gaps` -> recording.jsonl, which the
    verdict fails as unverified), and the watch is retried at the longest backoff, not in a tight loop."""
    _cluster(api, tmp_path)
    said: list[str] = []
    b = _backend(api, tmp_path, progress=said.append)
    api.grant(CONTEXT, without(nightly_rules(), "", "pods", "watch"))
    api.sim.review_refusal = 403
    watch = 'pods is forbidden: User "edge-harness" cannot watch resource "pods" in API group "" at the cluster scope'
    try:
        b.up(rendered(tmp_path))
        assert wait_until(lambda: bool(b.record_gaps()), 30)
        time.sleep(1.5)
    finally:
        b.close()
    (gap,) = b.record_gaps()
    assert gap.startswith("inventory.jsonl: context eks-nightly refused the pod watch (HTTP 403: ") and watch in gap
    assert [line for line in said if line.startswith("warning: ")] == [f"warning: {gap}"]
    assert watch in api.sim.rbac_denials
    assert api.sim.rbac_denials.count(watch) <= 2  # no quick retries of a permission problem
    assert any("SelfSubjectAccessReview refused" in line for line in said)


def test_the_gaps_of_a_backends_records_reach_recording_jsonl(tmp_path: Path) -> None:
    """The recording step writes `record_gaps` as record-file problems: the verdict fails what they miss."""
    from harness.backends.base import Observation
    from harness.contract.rundir import RECORD_FILES, RECORDING_FILE
    from harness.e2e import recording

    backend = MagicMock(spec=Observation)
    backend.record_gaps.return_value = ["inventory.jsonl: refused the pod watch"]
    backend.record_into.return_value = MagicMock(errors=[], names={"inventory.jsonl"})
    backend.flush_access_logs.return_value = []
    backend.log_sources.return_value = []
    with recording(backend, tmp_path):
        pass
    recs = [json.loads(line) for line in (tmp_path / RECORDING_FILE).read_text().splitlines()]
    assert [r["message"] for r in recs if r["what"] == RECORD_FILES] == ["inventory.jsonl: refused the pod watch"]


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

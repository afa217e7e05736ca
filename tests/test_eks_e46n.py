"""EKS first contact (e46n): the operator's own Consul (no --install-consul) and a node fault that drains its
webhook-cert-manager.

The chart's webhook-cert-manager keeps its CA in memory only (consul-k8s v1.9.11 subcommand/webhook-cert-manager/
command.go: cert.GenSource at every start) and the pod webhook's failurePolicy is Fail (templates/connect-inject-
mutatingwebhookconfiguration.yaml), whoever ran `helm install`: a manager drained with its node starts again with a
new CA, and every pod CREATE is refused until the kubelet syncs the injector's Secret volume (up to about a minute).
The restore waited that window out only with --install-consul, and looked for the manager in the rendered release's
namespace only: with the operator's Consul (the least-privilege nightly, deploy/eks-nightly-rbac.yaml alone) the
restore returned into the window, and the next fault's replacements and the harness's own probe pods were refused
for a time no config sets. The dry-run pod create the wait makes is granted by the nightly role in every mode
(`permissions.NEEDS`: pods create in the run's namespaces), so the same wait runs here; a role without it is refused
by `up` before anything changes, in one line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.backends.existing import ExistingBackend
from harness.backends.kube import KubeCluster
from harness.errors import BackendError
from harness.render.manifests import Manifests
from tests.conftest import wait_until
from tests.kubefake import OPERATOR_ENV, FakeApiServer, fake_tools, rendered
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.kuberbac import RequestInfo, nightly_rules, without
from tests.test_backend_existing import CONTEXT, _backend, _cluster
from tests.test_eks_webhook_k45i import drained_manager_restore_waits_out_its_ca, running_on
from tests.test_firstcontact_a44k import restore_elsewhere_asks_nothing
from tests.test_flows import NIGHTLY_SET, e2e_options, existing_options
from tests.test_flows import tools as tools  # the fake tools on PATH, re-exported for pytest

pytestmark = pytest.mark.slow

OPERATOR_NS = "consul-system"
"""Not the rendered release's namespace (`consul`): the operator installed Consul where they chose."""


def _operator_cluster(api: FakeApiServer, tmp_path: Path) -> KubeCluster:
    """The EKS-like cluster with the operator's Consul (the rendered values) in a namespace of their own."""
    admin = _cluster(api, tmp_path, consul={})
    api.install_consul(rendered(tmp_path / "operator").helm_values, namespace=OPERATOR_NS)
    assert wait_until(lambda: (c := admin.find_consul()) is not None and c.servers_ready == 1, 60)
    assert wait_until(lambda: len(running_on(admin, OPERATOR_NS)) == 1, 30)
    return admin


@pytest.fixture
def up(
    api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ExistingBackend, Manifests]]:
    """The least-privilege nightly: the operator's Consul, the shop brought up by the harness, node faults allowed."""
    fake_tools(api, tmp_path, monkeypatch, OPERATOR_ENV)
    _operator_cluster(api, tmp_path)
    b = _backend(api, tmp_path, (CONTEXT,), execute=True)
    m = rendered(tmp_path)
    b.up(m)
    yield b, m
    b.close()


def test_operator_consul_node_kill_that_drains_its_manager_returns_only_once_its_new_ca_is_served(
    up: tuple[ExistingBackend, Manifests], api: FakeApiServer, tmp_path: Path
) -> None:
    """Reproducer: without --install-consul the restore did not look for the manager (and looked in the rendered
    `consul` namespace when it did), so it returned while the API server still refused every new pod."""
    drained_manager_restore_waits_out_its_ca(api, tmp_path, up, OPERATOR_NS)


def _dry_runs(api: FakeApiServer) -> int:
    return sum(1 for m, _p, q, _d in api.requests() if m == "POST" and q.get("dryRun") == "All")


def test_operator_consul_node_kill_elsewhere_asks_nothing_more(
    up: tuple[ExistingBackend, Manifests], api: FakeApiServer, tmp_path: Path
) -> None:
    """Control: a Local Zone's node; the manager keeps running, the CA stays, nothing refused, no probe made."""
    backend, m = up
    probes_before = _dry_runs(api)
    restore_elsewhere_asks_nothing(api, m, backend, backend.cluster.nodes(), "us-west-2-lax-1a", OPERATOR_NS)
    assert _dry_runs(api) == probes_before


def test_a_role_without_the_probes_pod_create_is_refused_by_up_in_one_line(
    api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other side of the decision: the admission probe needs `create pods` in the run's namespaces, which `up`
    asks the API server for before it changes anything; a role without it is refused there, in one line naming it,
    never halfway through a restore."""
    fake_tools(api, tmp_path, monkeypatch, OPERATOR_ENV)
    _operator_cluster(api, tmp_path)
    b = _backend(api, tmp_path, (CONTEXT,), execute=True)
    api.grant(CONTEXT, [*without(nightly_rules(), "", "pods", "create")])
    before = api.writes()
    with pytest.raises(BackendError) as err:
        b.up(rendered(tmp_path))
    b.close()
    text = str(err.value)
    assert "create pods (hashicups" in text and "\n" not in text and "deploy/eks-nightly-rbac.yaml" in text
    assert api.writes() == before


# -- the nightly role against what a full existing e2e uses ------------------------------------------------------


Grant = tuple[str, str, str, tuple[str, ...]]

NOT_IN_THE_NIGHTLY_SET: dict[Grant, str] = {
    **{("", r, v, ()): "down deletes an object only where up did not create its namespace; a re-up patches"
       for r in ("configmaps", "serviceaccounts", "services") for v in ("patch", "delete")},
    **{("apps", "deployments", v, ()): "the same: a re-up patches, down deletes outside created namespaces"
       for v in ("patch", "delete")},
    **{("consul.hashicorp.com", r, v, ()): "the same, for the config entries in their namespaces"
       for r in ("servicedefaults", "serviceintentions", "serviceresolvers", "servicerouters")
       for v in ("patch", "delete")},
    ("consul.hashicorp.com", "proxydefaults", "patch", ()): "a re-up of the mesh-wide ProxyDefaults",
    ("consul.hashicorp.com", "proxydefaults", "update", ()): "--own-mesh-defaults: down puts a taken-over one back",
    **{("networking.k8s.io", "ingresses", v, ()): "a zone with albSubnets (its ALB)"
       for v in ("create", "patch", "delete", "get")},
    **{("networking.k8s.io", "networkpolicies", v, ()): "partition_zone and its NetworkPolicy probe"
       for v in ("create", "patch", "delete")},
    ("", "pods/portforward", "create", ()): "API servers >= 1.35 also check create on a WebSocket port-forward",
}  # fmt: skip
"""The shipped role's grants the nightly set (eks-edge + node-kill) does not use, each with the path that does."""


def _grants_of(rules: list[dict[str, Any]]) -> set[Grant]:
    return {(g, r, v, tuple(rule.get("resourceNames") or ())) for rule in rules for g in rule["apiGroups"]
            for r in rule["resources"] for v in rule["verbs"]}  # fmt: skip


def _granted_requests(api: FakeApiServer, context: str) -> list[RequestInfo]:
    token = api.token(context)
    return [i for tok, i in api.sim.call(lambda: list(api.sim.rbac_granted)) if tok == token]


def _used(rules: list[dict[str, Any]], requests: list[RequestInfo]) -> set[Grant]:
    """The role's grants the requests were allowed by (the named one, when a rule names its objects)."""
    grants = _grants_of(rules)
    return {(g, r, v, names) for i in requests for g, r, v, names in grants
            if (g, r, v) == (i.group, i.combined, i.verb) and (not names or i.name in names)}  # fmt: skip


def test_every_call_of_a_full_existing_e2e_is_asked_up_front_and_granted_and_the_role_holds_no_more(
    api: FakeApiServer, tools: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The nightly's whole run (`harness e2e`: up, traffic, eks-edge + node-kill in chaos subprocesses, verify,
    artifacts, down) against the operator's TLS + ACL Consul, under exactly deploy/eks-nightly-rbac.yaml, every
    request of its identity recorded by the simulated authorizer. Each one must be (a) granted by the file, (b) one
    `up`'s SelfSubjectAccessReviews asked about (`permissions.NEEDS` via `permissions_needed`: the up-front check
    that refuses before anything changes), and (c) the file grants nothing beyond what the run used and
    `NOT_IN_THE_NIGHTLY_SET` names. (b) failed: kubectl's port-forward to Consul's UI Service gets the pod behind
    it, and the post-mortem reads events and logs of every declared namespace (Consul's too), none of them asked,
    so a role scoped to what the check asks for would pass `up` and be refused mid-run."""
    from harness.backends import connect
    from harness.e2e import run_e2e
    from harness.render.manifests import load
    from tests.test_consul_tls_acl import HARNESS_RIGHTS, tls_acl_values

    _cluster(api, tmp_path, tls_acl_values(rendered(tmp_path / "operator").helm_values))
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", api.sim.call(lambda: api.sim.acl_token(HARNESS_RIGHTS)))
    bopts = existing_options(api, api.write_kubeconfig(tmp_path / "kubeconfig", CONTEXT))
    opts = e2e_options(*NIGHTLY_SET)
    res = run_e2e(opts, bopts, say=lambda _s: None)
    assert res.chaos_ok, res.messages
    assert api.sim.rbac_denials == []  # (a)
    requests = [i for i in _granted_requests(api, CONTEXT) if i.resource != "selfsubjectaccessreviews"]
    assert {i.combined for i in requests} >= {"pods", "pods/log", "pods/portforward", "nodes", "events", "secrets"}
    backend = connect(bopts)
    try:
        asked = backend.permissions_needed(load(res.run_dir / "manifests"))  # type: ignore[attr-defined]
    finally:
        backend.close()

    def covered(i: RequestInfo) -> bool:
        return any((p.verb, p.group, p.resource) == (i.verb, i.group, i.combined) and p.namespace in ("", i.namespace)
                   and (not p.name or p.name == i.name) for p in asked)  # fmt: skip

    unasked = sorted({f"{i.verb} {i.combined} ({i.namespace or 'cluster'})" for i in requests if not covered(i)})
    assert unasked == []  # (b)
    rules = nightly_rules()
    unused = _grants_of(rules) - _used(rules, requests)
    assert unused == set(NOT_IN_THE_NIGHTLY_SET), sorted(unused ^ set(NOT_IN_THE_NIGHTLY_SET))  # (c)

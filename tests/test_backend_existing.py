"""Contract tests of the existing (EKS) backend against the fake API server."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from harness.backends.base import Status
from harness.backends.existing import PARTITION_POLICY, ExistingBackend, check_zones, zone_type_of
from harness.backends.kube import KubeCluster, NodeInfo
from harness.errors import BackendError
from tests.kubefake import FakeApiServer, lax_pod, node, pod, rendered
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest

# EKS-like nodes: no edge-harness zone-type label (type follows AWS zone naming), named after their IP.
EKS_NODES = [
    node(f"ip-{ip.replace('.', '-')}.us-west-2.compute.internal", zone, "", ip, "")
    for zone, ip in (
        ("us-west-2a", "10.0.1.10"),
        ("us-west-2b", "10.0.2.10"),
        ("us-west-2-lax-1a", "10.0.3.10"),
        ("us-west-2-las-1a", "10.0.4.10"),
        ("us-west-2-phx-2a", "10.0.5.10"),
        ("us-west-2-phx-2a", "10.0.5.11"),
        ("us-west-2c", "10.0.6.10"),  # not in the topology
    )
]


def _backend(api: FakeApiServer, tmp_path: Path, allow: tuple[str, ...] = (), **kw: object) -> ExistingBackend:
    kc = api.write_kubeconfig(tmp_path / "kubeconfig", "eks-nightly")
    return ExistingBackend("eks-nightly", kc, allow, workdir=tmp_path / "wd", **kw)  # type: ignore[arg-type]


def _mark_ready(c: KubeCluster, stop: threading.Event) -> None:
    while not stop.is_set():
        for d in (c.request("GET", "/apis/apps/v1/deployments") or {}).get("items", []):
            if not (d.get("status") or {}).get("readyReplicas"):
                ns, name = d["metadata"]["namespace"], d["metadata"]["name"]
                c.request(
                    "PATCH",
                    f"/apis/apps/v1/namespaces/{ns}/deployments/{name}",
                    body={"status": {"readyReplicas": d["spec"]["replicas"]}},
                    content_type="application/merge-patch+json",
                )
        time.sleep(0.3)


def _up(api: FakeApiServer, tmp_path: Path, b: ExistingBackend) -> None:
    stop = threading.Event()
    t = threading.Thread(target=_mark_ready, args=(api.cluster(tmp_path, "ctl"), stop), daemon=True)
    t.start()
    try:
        b.up(rendered(tmp_path))
    finally:
        stop.set()
        t.join()


def test_zone_types_from_labels_or_aws_naming() -> None:
    def n(zone: str, zt: str = "") -> NodeInfo:
        return NodeInfo("n", zone, "us-west-2", zt, "", (), False)

    assert zone_type_of(n("us-west-2a")) == "availability-zone"
    assert zone_type_of(n("us-west-2-lax-1a")) == "local-zone"
    assert zone_type_of(n("us-east-1-wl1-bos-wlz-1")) == "wavelength-zone"
    assert zone_type_of(n("us-west-2a", "local-zone")) == "local-zone"  # the label wins


def test_zone_check_reports_missing_mistyped_and_extra(tmp_path: Path) -> None:
    t = rendered(tmp_path).topology
    nodes = [
        NodeInfo("a", "us-west-2a", "us-west-2", "", "", (), False),
        NodeInfo("b", "us-west-2b", "us-west-2", "", "", (), False),
        NodeInfo("c", "us-west-2-lax-1a", "us-west-2", "wavelength-zone", "", (), False),
        NodeInfo("d", "us-west-2-las-1a", "us-west-2", "", "", (), False),
        NodeInfo("e", "us-west-2c", "us-west-2", "", "", (), False),
    ]
    r = check_zones(nodes, t)
    assert r.problems == [
        "zone us-west-2-lax-1a is wavelength-zone in the cluster but local-zone in the topology",
        "zone us-west-2-phx-2a (local-zone) has no nodes",
    ]
    assert r.extra == ["us-west-2c"]
    wrong_region = [NodeInfo(x.name, x.zone, "eu-west-1", x.zone_type, "", (), False) for x in nodes]
    assert "nodes are in region eu-west-1, the topology says us-west-2" in check_zones(wrong_region, t).problems


def test_up_refuses_a_cluster_that_does_not_match(api: FakeApiServer, tmp_path: Path) -> None:
    b = _backend(api, tmp_path)
    api.seed(b.cluster, *EKS_NODES[:3])
    with pytest.raises(
        BackendError,
        match=r"^context eks-nightly does not match the topology: zone us-west-2-las-1a \(local-zone\) has no nodes; "
        r"zone us-west-2-phx-2a \(local-zone\) has no nodes$",
    ):
        b.up(rendered(tmp_path))
    assert [m for m, _p, _d in api.writes() if m != "POST" or _d.get("kind") != "Node"] == []  # nothing applied


def test_up_applies_then_down_deletes_only_what_it_created(api: FakeApiServer, tmp_path: Path) -> None:
    b = _backend(api, tmp_path)
    progress: list[str] = []
    b.progress = progress.append
    c = b.cluster
    api.seed(c, *EKS_NODES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "consul"}})
    _up(api, tmp_path, b)
    assert "zones not in the topology (left alone): us-west-2c" in progress
    assert progress[-1].startswith("deployments ready ")
    m = rendered(tmp_path)
    before = len(api.writes())
    b.down()
    deletes = [p for meth, p, _d in api.writes()[before:] if meth == "DELETE"]
    # consul existed before: it stays, but the ProxyDefaults applied into it goes
    assert "/api/v1/namespaces/consul" not in deletes
    assert "/apis/consul.hashicorp.com/v1alpha1/namespaces/consul/proxydefaults/global" in deletes
    ns_created = [
        o["metadata"]["name"] for o in m.objects if o["kind"] == "Namespace" and o["metadata"]["name"] != "consul"
    ]
    assert deletes[-len(ns_created) :] == [f"/api/v1/namespaces/{n}" for n in reversed(ns_created)]
    assert len(deletes) == 1 + len(ns_created)  # objects inside created namespaces go with them
    assert not (tmp_path / "wd" / "existing-eks-nightly" / "state.json").exists()
    b.down()  # idempotent: nothing recorded, nothing deleted
    assert [m for m, _p, _d in api.writes()[before + len(deletes) :] if m == "DELETE"] == []


def test_destructive_chaos_refused_unless_allow_listed(
    api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EH_ALLOW_CONTEXTS", raising=False)
    b = _backend(api, tmp_path, ("staging",), manifests=rendered(tmp_path))
    api.seed(b.cluster, *EKS_NODES)
    before = len(api.writes())
    for call in (
        lambda: b.kill_node(EKS_NODES[2]["metadata"]["name"]),
        lambda: b.zone_outage("us-west-2-lax-1a"),
        lambda: b.partition_zone("us-west-2-lax-1a"),
    ):
        with pytest.raises(BackendError, match=r"^refusing \w+ .* on context 'eks-nightly': destructive chaos needs"):
            call()
    assert api.writes()[before:] == []
    monkeypatch.setenv("EH_ALLOW_CONTEXTS", "other, eks-nightly")
    assert _backend(api, tmp_path).destructive_allowed


def test_node_kill_is_cordon_and_pod_deletion(api: FakeApiServer, tmp_path: Path) -> None:
    b = _backend(api, tmp_path, ("eks-nightly",), manifests=rendered(tmp_path))
    phx1, phx2 = EKS_NODES[4]["metadata"]["name"], EKS_NODES[5]["metadata"]["name"]
    api.seed(
        b.cluster,
        *EKS_NODES,
        pod("pa-1", "hashicups-phx-2a", "us-west-2-phx-2a", "product-api", "product-api-phx-2a", "10.0.5.20", phx1),
        pod("pa-2", "hashicups-phx-2a", "us-west-2-phx-2a", "product-api", "product-api-phx-2a", "10.0.5.21", phx2),
    )
    before = len(api.writes())
    b.zone_outage("us-west-2-phx-2a")
    w = api.writes()[before:]
    # both nodes cordoned before any pod dies, so no pod is rescheduled onto the sibling
    assert [(m, p) for m, p, _d in w] == [
        ("PATCH", f"/api/v1/nodes/{phx1}"),
        ("PATCH", f"/api/v1/nodes/{phx2}"),
        ("PATCH", f"/api/v1/nodes/{phx1}"),
        ("DELETE", "/api/v1/namespaces/hashicups-phx-2a/pods/pa-1"),
        ("PATCH", f"/api/v1/nodes/{phx2}"),
        ("DELETE", "/api/v1/namespaces/hashicups-phx-2a/pods/pa-2"),
    ]
    b.restore_zone("us-west-2-phx-2a")
    assert not any(n.unschedulable for n in b.cluster.node_infos())
    b.kill_node(phx1)
    assert {n.name: n.unschedulable for n in b.cluster.node_infos()}[phx1]
    b.restore_node(phx1)
    assert not any(n.unschedulable for n in b.cluster.node_infos())
    with pytest.raises(BackendError, match="no nodes in zone us-west-2-nowhere-1a"):
        b.restore_zone("us-west-2-nowhere-1a")


def test_partition_is_a_network_policy_in_the_zone_namespace(api: FakeApiServer, tmp_path: Path) -> None:
    b = _backend(api, tmp_path, ("eks-nightly",), manifests=rendered(tmp_path))
    b.partition_zone("us-west-2-lax-1a")
    meth, path, body = api.writes()[-1]
    assert (meth, path) == ("POST", "/apis/networking.k8s.io/v1/namespaces/hashicups-lax-1a/networkpolicies")
    assert body["metadata"]["name"] == PARTITION_POLICY
    assert body["spec"]["podSelector"] == {} and body["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert body["spec"]["egress"][0] == {"to": [{"podSelector": {}}]}  # own namespace only (plus DNS)
    b.heal_zone("us-west-2-lax-1a")
    assert api.writes()[-1][:2] == (
        "DELETE",
        f"/apis/networking.k8s.io/v1/namespaces/hashicups-lax-1a/networkpolicies/{PARTITION_POLICY}",
    )
    with pytest.raises(BackendError, match="us-west-2a is not an edge zone"):
        b.partition_zone("us-west-2a")
    with pytest.raises(BackendError, match="set_link is not available on the existing backend"):
        b.set_link("us-west-2-lax-1a", 100)
    with pytest.raises(BackendError, match="set_link is not available"):
        b.clear_link("us-west-2-lax-1a")


def test_pod_chaos_inventory_status_entrypoints(
    api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = _backend(api, tmp_path, manifests=rendered(tmp_path))
    lax = EKS_NODES[2]["metadata"]["name"]
    api.seed(
        b.cluster,
        *EKS_NODES,
        lax_pod("pa-1", "10.0.3.20", lax),
    )
    inv = b.inventory()
    info = inv.by_ip("10.0.3.20")
    assert info is not None and info.zone == "us-west-2-lax-1a" and info.node == lax
    assert b.set_pod_unready("us-west-2-lax-1a", "product-api") == ["pa-1"]
    assert b.set_pod_ready("us-west-2-lax-1a", "product-api") == ["pa-1"]
    assert b.kill_pod("us-west-2-lax-1a", "product-api") == ["pa-1"]
    assert b.nodes()[lax] == "us-west-2-lax-1a"
    st = b.status()
    assert isinstance(st, Status) and not st.up
    assert "extra zones: us-west-2c" in st.detail
    assert [s.pod for s in b.log_sources()] == []
    b.close()

    monkeypatch.delenv("EH_ENTRYPOINTS", raising=False)
    with pytest.raises(BackendError, match="set EH_ENTRYPOINTS"):
        b.entrypoints()
    monkeypatch.setenv("EH_ENTRYPOINTS", '{"us-west-2-lax-1a": "https://lax.example.test/"}')
    assert b.entrypoints() == {"us-west-2-lax-1a": "https://lax.example.test"}
    monkeypatch.setenv("EH_ENTRYPOINTS", "[1]")
    with pytest.raises(BackendError, match="expected a JSON object"):
        b.entrypoints()
    monkeypatch.setenv("EH_ENTRYPOINTS", "{")
    with pytest.raises(BackendError, match="not JSON"):
        b.entrypoints()


def test_context_is_required_and_bad_context_is_clear(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="needs a kubeconfig context"):
        ExistingBackend("", None)
    kc = tmp_path / "kc"
    kc.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\ncurrent-context: ''\n")
    b = ExistingBackend("prod", kc, workdir=tmp_path)
    with pytest.raises(BackendError, match=f"kubeconfig {kc}: cannot use context prod"):
        _ = b.cluster
    with pytest.raises(BackendError, match="no manifests recorded"):
        b.manifests()


def test_install_consul_runs_the_pinned_chart_in_the_context(
    api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    calls: list[list[str]] = []

    def run(argv: list[str], **_kw: object) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        failing = argv[1:3] == ["upgrade", "--install"] and len(calls) > 2
        return subprocess.CompletedProcess(argv, 1 if failing else 0, "", "Error: timed out waiting" if failing else "")

    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "helm").write_text("#!/bin/sh\nexit 0\n")
    (bindir / "helm").chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    b = _backend(api, tmp_path, install_consul=True, run=run)
    api.seed(b.cluster, *EKS_NODES)
    _up(api, tmp_path, b)
    wd = tmp_path / "wd" / "existing-eks-nightly"
    assert calls == [
        [str(bindir / "helm"), "repo", "add", "hashicorp", "https://helm.releases.hashicorp.com", "--force-update"],
        [
            str(bindir / "helm"), "upgrade", "--install", "consul", "hashicorp/consul", "--version", "1.9.11",
            "-n", "consul", "--create-namespace", "-f", str(wd / "consul-values.yaml"),
            "--kube-context", "eks-nightly", "--kubeconfig", str(tmp_path / "kubeconfig"), "--wait", "--timeout", "15m",
        ],
    ]  # fmt: skip
    with pytest.raises(BackendError, match=r"^`helm upgrade --install` failed \(exit 1\): Error: timed out waiting"):
        b.up(rendered(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(BackendError, match=r"^install_consul needs `helm` on PATH"):
        b.up(rendered(tmp_path))


def test_from_options(tmp_path: Path) -> None:
    from harness.backends import BackendOptions

    opts = BackendOptions(name="existing", context="eks-a", allow_contexts=["eks-a"], workdir=tmp_path)
    b = ExistingBackend.from_options(opts)
    assert (b.context, b.destructive_allowed, b.workdir) == ("eks-a", True, tmp_path / "existing-eks-a")
    with pytest.raises(BackendError, match="needs a kubeconfig context"):
        ExistingBackend.from_options(BackendOptions(name="existing", workdir=tmp_path))

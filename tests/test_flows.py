"""The whole loop on the simulated cluster: `harness e2e` with the kind backend and with the existing (EKS) backend.

Everything is the real code path: render, `up` through the fake kind/helm/
docker/kubectl and the simulated API, locust against the entry points, the
chaos experiments in `chaos run` subprocesses (which reach the same cluster
through the state the backend left in its workdir), the sidecars' access
logs followed through the log API and flushed, the inventory watched from
`up`, artifacts, `down`, then observe and verify. The cluster acts like one
(`tests.kubesim`): killed pods come back under new names and IPs, a killed
node's pods stay Ready in the API for the node controller's grace period and
restart under new IPs, Envoy buffers its access logs.

What is asserted is what issue 8 and 9 require of these flows: the run
completes with every chaos experiment `completed`, killed pods and their
replacements are in the inventory with ready/unready events, every hop's
serving IP is attributed, the entry points were recorded (down while a zone
had no frontend) and survived, each sidecar's Envoy config dump is in the
artifacts, and the cluster is gone (kind) or left as found (EKS).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from harness.backends import BackendOptions
from harness.contract.clock import read_clock, read_records
from harness.contract.rundir import ACCESS_LOG_FLUSH_S, CLOCK_FILE, HOPS_PARQUET_FILE
from harness.e2e import E2EOptions, run_e2e
from tests.conftest import REPO, wait_until
from tests.kubefake import OPERATOR_ENV, FakeApiServer, fake_tools, rendered
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.test_backend_existing import EKS_NODES, _backend, _cluster

LAX = "us-west-2-lax-1a"
PHX = "us-west-2-phx-2a"
pytestmark = [pytest.mark.slow, pytest.mark.chaos]


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


@pytest.fixture
def tools(api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The fake tools on PATH (their argv log yielded), none of the operator's or a run's settings inherited."""
    unset = (*OPERATOR_ENV, "CONSUL_HTTP_SSL_VERIFY", "EH_RUN_DIR", "EH_BACKEND", "EH_CONTEXT")
    log = fake_tools(api, tmp_path, monkeypatch, unset)
    monkeypatch.chdir(tmp_path)  # runs/ and runs/.backend/ (shared with the chaos processes) live here
    yield log


def _hops(run_dir: Path) -> list[dict[str, Any]]:
    """e2e's hop record (hops.parquet; hops.jsonl is only an export)."""
    path = run_dir / HOPS_PARQUET_FILE
    if not path.exists():
        return []
    rel = duckdb.sql(f"SELECT * FROM read_parquet('{path}')")
    return [dict(zip(rel.columns, row, strict=True)) for row in rel.fetchall()]


def _check_records(run_dir: Path, killed_zone: str) -> dict[str, Any]:
    """What every Kubernetes-backend run directory must hold after pod and node chaos."""
    inv = _jsonl(run_dir / "inventory.jsonl")
    events = {e["event"] for e in inv}
    assert {"added", "ready", "removed"} <= events, events
    added = {e["pod"]: e for e in inv if e["event"] == "added"}
    removed = {e["pod"] for e in inv if e["event"] == "removed"}
    # the killed product-api and its replacement (another name, another IP) are both in the history
    gone = [p for p in removed if p.startswith("product-api-lax-1a-")]
    assert gone, "the killed pod is in the inventory"
    assert any(p.startswith("product-api-lax-1a-") and p not in removed for p in added), "its replacement too"
    # every ready follows its added
    for e in inv:
        if e["event"] == "ready":
            assert e["ts"] >= added[e["pod"]]["ts"]
    # every hop is attributed: its upstream host is a pod the inventory held at that time
    hops = _hops(run_dir)
    assert len(hops) > 100
    with_host = [h for h in hops if h["upstream_host"]]
    assert with_host and all(h["serving_pod"] for h in with_host), [h for h in with_host if not h["serving_pod"]][:3]
    # entry points: recorded per zone; down while the zone had no serving frontend
    entry = _jsonl(run_dir / "entrypoints.jsonl")
    assert {e["zone"] for e in entry} == {e["zone"] for e in _jsonl(run_dir / "requests.jsonl")}
    # every answered request through /api carried its id to its zone's entry sidecar, which logged it (the
    # verifier finds each request's entry hop by it: harness.contract.requestid)
    api = [r for r in _jsonl(run_dir / "requests.jsonl") if r["name"].startswith("POST /api") and r["ok"]]
    logged = {
        x.get("request_id")
        for f in (run_dir / "accesslogs").glob("frontend-*.jsonl")
        for x in _jsonl(f)
        if str(x.get("request_id") or "").startswith("eh-")
    }
    assert api and all(isinstance(r["request_id"], int) for r in api), api[:3]
    # but for those a killed node's sidecar had not flushed: answered in its last second (Envoy logs a request
    # when it ends: one begun earlier and answered late, a CPU-starved CI lane's 1 s stall, is in that buffer too)
    chaos = _jsonl(run_dir / "chaos.jsonl")
    nodes = [
        (
            c["zone"],
            c["ts"] - ACCESS_LOG_FLUSH_S,
            next((x["ts"] for x in chaos if x["fault"] == c["fault"] and x["phase"] == "restore"), 1e18),
        )
        for c in chaos
        if c["action"] == "kill_node" and c["phase"] == "inject"
    ]
    missing = [
        r
        for r in api
        if f"eh-{r['request_id']:016x}" not in logged
        and not any(z == r["zone"] and lo <= r["ts"] + r["latency_ms"] / 1000 and r["ts"] <= hi for z, lo, hi in nodes)
    ]
    assert not missing, missing[:3]
    # artifacts: every sidecar's Envoy config and clusters
    dumps = list((run_dir / "artifacts").glob("*/*.envoy-config_dump.json"))
    assert len(dumps) >= 16 and all("configs" in json.loads(d.read_text()) for d in dumps)
    assert len(list((run_dir / "artifacts").glob("*/*.envoy-clusters.json"))) == len(dumps)
    journals = sorted(run_dir.rglob("*journal*.json"))
    assert journals
    return {"inventory": inv, "hops": hops, "entry": entry}


NIGHTLY_SET = ("eks-edge", "node-kill")
"""What the EKS nightly runs (README, "What the nightly runs"): the flow below and the nightly role's test run it."""


def e2e_options(*experiments: str) -> E2EOptions:
    """A short e2e of the default topology running `experiments` (names in experiments/): six users, a 3 s
    warm-up, a 1 s cool-down; the simulated cluster needs no more to show every record the flows check."""
    return E2EOptions(
        topology=REPO / "fixtures" / "topology.yaml",
        experiments=[REPO / "experiments" / f"{name}.json" for name in experiments],
        users=6,
        spawn_rate=6,
        warmup_s=3,
        cooldown_s=1,
    )


def test_kind_flow_up_traffic_pod_kill_node_kill_restore_down(api: FakeApiServer, tools: Path) -> None:
    opts = e2e_options("kill-product-api-lax", "node-kill")
    said: list[str] = []
    # the simulated cluster answers at once: `up` asks again after 0.1 s, not the real default's 2 s
    res = run_e2e(opts, BackendOptions(name="kind", cluster="edge", ready_poll_s=0.1), say=said.append)
    assert res.backend == "kind"
    assert res.chaos_ok, (res.messages, said)
    rec = _check_records(res.run_dir, LAX)
    inv = rec["inventory"]
    # the node kill: the lax-1a node's pods came back on the same node under new IPs (event `ip`)
    moved = [e for e in inv if e["event"] == "ip" and e["zone"] == LAX]
    assert moved, "pods of the killed node restarted with new IPs"
    lax_entry = [(e["up"], e["reason"]) for e in rec["entry"] if e["zone"] == LAX]
    assert lax_entry[0] == (True, None) and any(not up for up, _r in lax_entry) and lax_entry[-1][0]
    # the commands kind, helm and docker document, and the cluster is gone
    calls = [json.loads(x) for x in tools.read_text().splitlines()]
    assert ["docker", "stop", "edge-worker3"] in calls and ["docker", "start", "edge-worker3"] in calls
    assert calls[-1][:3] == ["kind", "delete", "cluster"]
    assert api.sim.kind_cluster is None
    assert (res.run_dir / "verdict.json").exists()
    # kind's nodes are containers of this machine: one clock, no probes, nothing corrected
    assert not (res.run_dir / CLOCK_FILE).exists()


def existing_options(api: FakeApiServer, kc: Path) -> BackendOptions:
    """The existing backend's options against the simulated EKS cluster, destructive chaos allowed, with the
    operator's per-zone URLs: a load balancer in front of each zone's entry Service (created by `up`)."""
    from harness.render import naming
    from harness.topology.model import load_topology

    t = load_topology(REPO / "fixtures" / "topology.yaml")
    urls = {}
    for z in t.zones:
        port = api.sim.call(lambda z=z: api.sim.expose(naming.namespace(t, z), f"entry-{t.short(z)}"))
        urls[z.name] = f"http://127.0.0.1:{port}"
    return BackendOptions(
        name="existing",
        context="eks-nightly",
        kubeconfig=str(kc),
        allow_contexts=["eks-nightly"],
        entrypoints=urls,
        execute=True,
        ready_poll_s=0.1,  # the simulated cluster answers at once (kind flow above)
    )


@pytest.mark.parametrize("consul", ["plain", "tls-acl"])
def test_existing_flow_runs_the_nightly_set_end_to_end(
    api: FakeApiServer, tools: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, consul: str
) -> None:
    """EKS-like nodes (Local Zone names, no harness labels), the operator's Consul, per-zone load balancers.

    `tls-acl`: the operator's Consul as HashiCorp's EKS tutorial installs it (TLS, HTTPS only, ACLs managed),
    reached with the operator's CA from the chart's Secret and a token of README's policy in CONSUL_HTTP_TOKEN.
    """
    if consul == "plain":
        c = _cluster(api, tmp_path)
    else:
        from tests.test_consul_tls_acl import HARNESS_RIGHTS, tls_acl_values

        c = _cluster(api, tmp_path, tls_acl_values(rendered(tmp_path / "operator").helm_values))
        monkeypatch.setenv("CONSUL_HTTP_TOKEN", api.sim.call(lambda: api.sim.acl_token(HARNESS_RIGHTS)))
    kc = api.write_kubeconfig(tmp_path / "kubeconfig", "eks-nightly")
    before_ns = {n["metadata"]["name"] for n in (c.request("GET", "/api/v1/namespaces") or {})["items"]}
    bopts = existing_options(api, kc)
    opts = e2e_options(*NIGHTLY_SET)
    said: list[str] = []
    res = run_e2e(opts, bopts, say=said.append)
    assert res.chaos_ok, (res.messages, said)
    preflight = json.loads((res.run_dir / "preflight.json").read_text())
    assert preflight["ok"] and preflight["consul"].startswith("https://" if consul == "tls-acl" else "http://")
    rec = _check_records(res.run_dir, LAX)
    # unready chaos: "another Local Zone"'s public-api left its Service and came back
    other = json.loads((res.run_dir / "plan.json").read_text())["experiments"][0]["roles"]["other_zone"]
    short = other.removeprefix("us-west-2-")
    unready = [e["event"] for e in rec["inventory"] if e["pod"].startswith(f"public-api-{short}-")]
    assert "unready" in unready and unready[-1] == "ready"
    # node kill on EKS = cordon + delete: lax-1a's pods were replaced (removed, then new ones added and ready)
    lax_removed = {e["pod"] for e in rec["inventory"] if e["event"] == "removed" and e["zone"] == LAX}
    assert any(p.startswith("frontend-lax-1a-") for p in lax_removed)
    # down left the cluster as it found it: the run's namespaces and config entries are gone, the nodes uncordoned
    assert wait_until(
        lambda: {n["metadata"]["name"] for n in (c.request("GET", "/api/v1/namespaces") or {})["items"]} == before_ns,
        15,
    )
    assert not any(n.unschedulable for n in c.node_infos())
    assert c.find_consul() is not None  # the operator's Consul stays
    assert len(c.node_infos()) == len(EKS_NODES)
    assert (res.run_dir / "verdict.json").exists()
    # consul-dataplane's bootstrap clusters (self_admin behind the ready listener the kubelet probes, its xDS
    # server, local_app) are on the pod's loopback: no attempt of the mesh, so no host the verdict cannot place
    assert "127.0.0.1:" not in (res.run_dir / "verdict.json").read_text()
    # the EKS nodes keep their own clocks: every zone's offset measured by the probes before and after the
    # traffic, and each zone with hops bounded in the verdict (coverage's clock checks)
    clock = read_clock(res.run_dir)
    assert clock is not None and clock.zones and all(z.bounded for z in clock.zones.values()), clock
    cov = next(i for i in res.verdict.invariants if i.name == "coverage")
    clocks = {c.subject: c.status for c in cov.checks if c.subject.startswith("clock ")}
    # ... PHX's two nodes included: the public-api on the second one is measured too (its sidecar logs the
    # probe's /api on its inbound listener, and the frontend's requests to it pair with their inbound lines by
    # X-Request-Id: harness.traffic.clock.find_pairs), so every zone's clock check passes on a healthy cluster
    assert f"clock {LAX}" in clocks and set(clocks.values()) == {"pass"}, clocks
    phx = next(c for c in cov.checks if c.subject == f"clock {PHX}")
    phx_nodes = {n["metadata"]["name"] for n in EKS_NODES
                 if n["metadata"]["labels"].get("topology.kubernetes.io/zone") == PHX}  # fmt: skip
    assert len(phx_nodes) == 2 and phx_nodes <= clock.measured_nodes(PHX), (phx_nodes, phx.detail)
    assert any(r.get("event") == "pair" for r in read_records(res.run_dir / CLOCK_FILE)[0])
    # the run, its chaos processes and kubectl did all this as the shipped deploy/eks-nightly-rbac.yaml allows
    # (`_cluster` binds it to the eks-nightly context): not one call was refused, swallowed 403s included
    assert api.sim.rbac_denials == []


# -- preflight's refused-probe: real calls from a probe pod --------------------------------------


def test_preflight_calls_the_undeclared_edges_and_catches_an_intention_that_lets_one_through(
    api: FakeApiServer, tools: Path, tmp_path: Path
) -> None:
    """Consul's decision alone is not the proof: a probe pod calls each edge with the source's certificate.

    Without the call (the Backend default) kind and EKS runs only noted that
    the refusal was unverified.
    """
    from harness.backends.kube.edgeprobe import LABEL_PROBE
    from harness.preflight import Expected, check_refused

    eks = _cluster(api, tmp_path)
    b = _backend(api, tmp_path)
    b.up(rendered(tmp_path))
    try:
        m = b.manifests()
        notes: list[str] = []
        checks = check_refused(b, Expected.of(m.topology, m.edition), notes)  # what preflight asks, minus Consul's view
        probes = {c.subject: c for c in checks}
        assert notes == [] and len(probes) == 7 and {c.check for c in checks} == {"refused-probe"}, (notes, probes)
        assert all(c.ok for c in probes.values()), [c for c in probes.values() if not c.ok]
        refused = {s for s, c in probes.items() if c.detail["refused"]}
        assert "frontend-lax-1a -> product-api-lax-1a" in refused and "frontend-las-1a -> public-api-lax-1a" in refused
        assert "frontend-lax-1a -> public-api-lax-1a" not in refused  # declared: the control call went through
        # the calls reached the destinations' sidecars with the sources' identities, and no probe pod stayed
        assert {f"{p['source']} -> {p['destination']}" for p in api.sim.edge_probes} == set(probes)
        left = lambda: [p for p in eks.pods() if (p["metadata"].get("labels") or {}).get(LABEL_PROBE)]  # noqa: E731
        assert wait_until(lambda: not left(), 60), left()  # deleted (a pod goes asynchronously, as on a cluster)

        # an intention that lets an undeclared caller through: the real call is answered
        def allow() -> None:
            spec = api.sim.consul.entries[("ServiceIntentions", "product-api-lax-1a")]  # type: ignore[union-attr]
            spec["sources"] = [{"name": "frontend-lax-1a", "action": "allow"}, *spec["sources"]]

        api.sim.call(allow)
        probe = b.probe_edge("frontend-lax-1a", "product-api-lax-1a")
        assert probe.possible and not probe.refused and "HTTP 200" in probe.detail, probe
        # an operator's Consul with ACLs refuses the leaf: no call, preflight notes it (as where none is possible)
        api.sim.consul_acls = True
        notes = []
        assert check_refused(b, Expected.of(m.topology, m.edition), notes) == []
        assert notes[0].startswith("refused-probe: not possible on this backend: Consul refused "), notes
        assert "ACLs need a token" in notes[0]
    finally:
        b.down()


# -- consul-k8s registers a pod from one Service only ------------------------------------------------


def test_the_frontend_stays_in_consul_when_its_zones_entry_service_goes(
    api: FakeApiServer, tools: Path, tmp_path: Path
) -> None:
    """Two Services select a zone's frontend pods: its own (`frontend-lax-1a`) and the zone's entry Service.

    consul-k8s v1.9.11's endpoints controller reconciles each Endpoints object
    on its own: without `consul.hashicorp.com/kubernetes-service` both register
    the pod (one instance, `k8s-service-name` written by the later reconcile,
    the entry Service), and deleting the entry Service (`down` deletes it
    first where the namespaces are the operator's; an operator retiring a
    zone's entry point) deregisters the still-running frontend, with nothing to
    put it back until the frontend's own Endpoints change. Preflight then sees
    the zone's frontend without a passing instance.
    """
    from harness.preflight import Expected, _consul_client, check_instances

    c = _cluster(api, tmp_path)
    b = _backend(api, tmp_path)
    b.up(rendered(tmp_path))
    try:
        m = b.manifests()
        exp = Expected.of(m.topology, m.edition)
        with b.consul_api() as url:
            client = _consul_client(url, b.consul_access())
            assert [x for x in check_instances(client, exp) if not x.ok] == []
            _index, regs = client.health.service("frontend-lax-1a", passing=True)
            assert {r["Service"]["Meta"]["k8s-service-name"] for r in regs} == {"frontend-lax-1a"}
            c.delete("v1", "Service", "hashicups-lax-1a", "entry-lax-1a")
            assert wait_until(lambda: not c.exists("v1", "Service", "hashicups-lax-1a", "entry-lax-1a"), 10)
            time.sleep(1.0)  # several of the endpoints controller's reconciles
            assert [x for x in check_instances(client, exp) if not x.ok] == []
    finally:
        b.down()

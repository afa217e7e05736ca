"""The fake API server behaves like Kubernetes where the harness depends on it (issue 8, deliverable 3).

Each test states one behaviour of a real cluster (sources in `tests.kubesim`)
and checks the simulation shows it through the same HTTP API the harness
uses, so a backend test that passes against the fake has met that behaviour:
list/watch by resourceVersion (and 410 Expired), the Ready condition with its
lastTransitionTime, a new IP for a re-created pod, a pod that stays Ready for
the node controller's grace period when its node dies, consul-k8s' Synced
condition, and a port-forward that dies with its pod.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from harness.backends.kube import InventoryWatcher, KubeApiError, KubeCluster, parse_k8s_time, pod_condition
from harness.contract.inventory import Inventory
from tests import kubesim_tools
from tests.conftest import wait_until
from tests.kubefake import NODES, FakeApiServer
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.kubesim import (
    BUILTIN_CHAINS,
    Packet,
    SimTimings,
    answers_http,
    fresh_netns,
    iptables_verdict,
    kube_proxy_sync,
    run_iptables_script,
    synced_netns,
)

pytestmark = pytest.mark.slow  # the simulated cluster runs in real time: seconds each


def _deployment(name: str, ns: str = "n", replicas: int = 1) -> dict[str, Any]:
    labels = {"app": name, "edge-harness.io/zone": "us-west-2a"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [{"name": "app", "image": "x", "ports": [{"name": "http", "containerPort": 80}]}]
                },
            },
        },
    }


def _ready_pods(c: KubeCluster, ns: str = "n") -> list[dict[str, Any]]:
    return [p for p in c.pods(ns) if pod_condition(p, "Ready")[0] == "True"]


def test_watch_from_a_list_resource_version_replays_only_later_events(api: FakeApiServer, tmp_path: Path) -> None:
    c = api.cluster(tmp_path)
    api.seed(c, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "n"}})
    doc = c.request("GET", "/api/v1/namespaces/n/configmaps")
    rv = doc["metadata"]["resourceVersion"]
    assert int(rv) >= int(doc["items"][0]["metadata"]["resourceVersion"])
    api.seed(c, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b", "namespace": "n"}})
    stream = c.stream_lines(
        "/api/v1/namespaces/n/configmaps",
        [("watch", "true"), ("resourceVersion", rv), ("timeoutSeconds", "1"), ("allowWatchBookmarks", "true")],
    )
    events = [json.loads(x) for x in stream.lines() if x.strip()]
    assert [(e["type"], e["object"]["metadata"].get("name")) for e in events] == [("ADDED", "b"), ("BOOKMARK", None)]
    # without a resourceVersion: the current state as synthetic ADDED events first
    stream = c.stream_lines("/api/v1/namespaces/n/configmaps", [("watch", "true"), ("timeoutSeconds", "1")])
    assert [json.loads(x)["object"]["metadata"]["name"] for x in stream.lines() if x.strip()] == ["a", "b"]


def test_a_watch_from_a_compacted_version_gets_410_expired(tmp_path: Path) -> None:
    with FakeApiServer(SimTimings(watch_history=5)) as server:
        c = server.cluster(tmp_path)
        server.seed(c, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "first", "namespace": "n"}})
        rv = c.request("GET", "/api/v1/namespaces/n/configmaps")["metadata"]["resourceVersion"]
        for i in range(10):
            server.seed(c, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"m{i}", "namespace": "n"}})
        stream = c.stream_lines("/api/v1/namespaces/n/configmaps", [("watch", "true"), ("resourceVersion", rv)])
        (event,) = [json.loads(x) for x in stream.lines() if x.strip()]
        assert event["type"] == "ERROR" and event["object"]["code"] == 410
        assert event["object"]["reason"] == "Expired"


def test_the_inventory_watch_resumes_from_its_version_and_relists_only_on_410(
    api: FakeApiServer, tmp_path: Path
) -> None:
    c = api.cluster(tmp_path)
    api.seed(c, NODES[0], _deployment("a"))
    inv = Inventory(tmp_path / "inventory.jsonl")
    w = InventoryWatcher(c, inv, watch_timeout_s=1)  # the server ends each watch after 1 s
    w.start()
    try:
        assert wait_until(lambda: any(inv.is_ready(p.pod) for p in inv.pods()), 60)
        time.sleep(2.5)  # two watch timeouts: resumed from the last resourceVersion, no new list
        assert w.relists == 1 and not w.errors
        c.delete_pod("n", inv.pods()[0].pod)
        assert wait_until(lambda: len(inv.pods()) == 2 and all(inv.is_ready(p.pod) for p in inv.pods(True)), 60)
    finally:
        w.stop()
    recs = [json.loads(x) for x in (tmp_path / "inventory.jsonl").read_text().splitlines()]
    # a graceful delete: Terminating (out of service) first, removed once its containers stopped; the
    # replacement's events interleave with the old pod's last ones as the two run side by side
    old, new = recs[0]["pod"], next(r for r in recs if r["pod"] != recs[0]["pod"])
    assert [r["event"] for r in recs if r["pod"] == old] == ["added", "ready", "unready", "removed"]
    assert [r["event"] for r in recs if r["pod"] == new["pod"]] == ["added", "ready"]
    assert recs[0]["ip"] != new["ip"]  # the replacement has another IP
    w._handle(json.dumps({"type": "ERROR", "object": {"code": 410, "message": "too old resource version"}}))
    assert w._rv == "" and "watch: too old resource version" in w.errors  # the next round lists again


def test_pods_get_an_ip_then_ready_with_its_transition_time(api: FakeApiServer, tmp_path: Path) -> None:
    c = api.cluster(tmp_path)
    t0 = time.time()
    api.seed(c, NODES[0], _deployment("a"))
    assert wait_until(lambda: bool(_ready_pods(c)), 60)
    (p,) = c.pods("n")
    assert p["status"]["phase"] == "Running" and p["status"]["podIP"].startswith("10.244.1.")
    status, at = pod_condition(p, "Ready")
    assert status == "True" and at is not None and int(t0) <= at <= time.time()
    assert p["status"]["conditions"][0]["lastTransitionTime"].endswith("Z")  # metav1.Time: seconds
    assert p["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
    ips = {p["status"]["podIP"]}
    for _ in range(3):  # every re-created pod: a new name and a new IP
        c.delete_pod("n", p["metadata"]["name"])  # graceful: Terminating (and still Ready) beside its replacement
        uid = p["metadata"]["uid"]
        assert wait_until(lambda uid=uid: any(q["metadata"]["uid"] != uid for q in _ready_pods(c)))
        p = next(q for q in _ready_pods(c) if q["metadata"]["uid"] != uid)
        assert p["status"]["podIP"] not in ips
        ips.add(p["status"]["podIP"])


def test_a_dead_node_keeps_its_pods_ready_for_the_grace_period(api: FakeApiServer, tmp_path: Path) -> None:
    c = api.cluster(tmp_path)
    api.seed(c, NODES[0], _deployment("a"))
    assert wait_until(lambda: bool(_ready_pods(c)), 60)
    before = c.pods("n")[0]
    grace = api.sim.t.node_grace_s
    api.sim.t.node_grace_s = 3600.0  # held while the test looks (a starved test may look only after 1 s)
    try:
        api.sim.call(lambda: api.sim.node_down("edge-worker"))
        assert _ready_pods(c), "the API still says Ready: the kubelet just stopped posting"
    finally:
        api.sim.t.node_grace_s = grace
    assert wait_until(lambda: not _ready_pods(c), 30)
    node = c.request("GET", "/api/v1/nodes/edge-worker")
    ready = next(x for x in node["status"]["conditions"] if x["type"] == "Ready")
    assert ready["status"] == "Unknown" and ready["reason"] == "NodeStatusUnknown"
    assert any(t["key"] == "node.kubernetes.io/unreachable" for t in node["spec"]["taints"])
    api.sim.call(lambda: api.sim.node_up("edge-worker"))
    assert wait_until(lambda: bool(_ready_pods(c)), 60)
    after = c.pods("n")[0]
    assert after["metadata"]["name"] == before["metadata"]["name"]  # the same pod...
    assert after["status"]["podIP"] != before["status"]["podIP"]  # ...in a new sandbox
    assert after["status"]["containerStatuses"][0]["restartCount"] == 1


def test_consul_crds_get_a_synced_condition_and_a_finalizer(api: FakeApiServer, tmp_path: Path) -> None:
    c = api.cluster(tmp_path)
    api.install_consul()
    sd = {
        "apiVersion": "consul.hashicorp.com/v1alpha1",
        "kind": "ServiceDefaults",
        "metadata": {"name": "web", "namespace": "consul"},
        "spec": {"protocol": "http"},
    }
    api.seed(c, sd)
    url = "/apis/consul.hashicorp.com/v1alpha1/namespaces/consul/servicedefaults/web"
    assert wait_until(lambda: (c.request("GET", url).get("status") or {}).get("lastSyncedTime") is not None, 60)
    obj = c.request("GET", url)
    (cond,) = obj["status"]["conditions"]
    assert (cond["type"], cond["status"]) == ("Synced", "True") and parse_k8s_time(cond["lastTransitionTime"])
    assert obj["metadata"]["finalizers"] == ["finalizers.consul.hashicorp.com"]
    # a resolver failing over to a service of another protocol is refused by Consul, and the CRD says so
    api.seed(
        c,
        {**sd, "metadata": {"name": "db", "namespace": "consul"}, "spec": {"protocol": "tcp"}},
        {
            "apiVersion": "consul.hashicorp.com/v1alpha1",
            "kind": "ServiceResolver",
            "metadata": {"name": "web", "namespace": "consul"},
            "spec": {"failover": {"*": {"targets": [{"service": "db"}]}}},
        },
    )
    res = "/apis/consul.hashicorp.com/v1alpha1/namespaces/consul/serviceresolvers/web"

    def refused() -> bool:
        conds = (c.request("GET", res).get("status") or {}).get("conditions") or []
        return any(x.get("status") == "False" for x in conds)

    assert wait_until(refused, 60)
    (cond,) = c.request("GET", res)["status"]["conditions"]
    assert cond["reason"] == "ConsulAgentError" and "uses inconsistent protocols" in cond["message"]
    # deletion waits for the controller to remove the entry from Consul and its finalizer
    c.delete("consul.hashicorp.com/v1alpha1", "ServiceDefaults", "consul", "web")
    assert wait_until(lambda: not c.exists("consul.hashicorp.com/v1alpha1", "ServiceDefaults", "consul", "web"), 60)
    assert ("ServiceDefaults", "web") not in api.sim.consul.entries  # type: ignore[union-attr]


def test_a_replace_needs_the_live_resource_version_for_a_custom_resource(api: FakeApiServer, tmp_path: Path) -> None:
    """PUT: optimistic concurrency as the API server has it (apiextensions-apiserver's customResourceStrategy)."""
    c = api.cluster(tmp_path)
    api.install_consul()
    sd = {"apiVersion": "consul.hashicorp.com/v1alpha1", "kind": "ServiceDefaults",
          "metadata": {"name": "web", "namespace": "consul"}, "spec": {"protocol": "http"}}  # fmt: skip
    api.seed(c, sd)
    url = "/apis/consul.hashicorp.com/v1alpha1/namespaces/consul/servicedefaults/web"
    # the controller writes the status once it has synced (a write: a new resourceVersion); wait for that
    assert wait_until(lambda: (c.request("GET", url).get("status") or {}).get("lastSyncedTime") is not None, 60)
    with pytest.raises(KubeApiError, match="must be specified for an update") as none:
        c.request("PUT", url, body={**sd, "spec": {"protocol": "tcp"}})
    live = c.request("GET", url)["metadata"]["resourceVersion"]
    stale = {**sd, "metadata": {**sd["metadata"], "resourceVersion": str(int(live) - 1)}}
    with pytest.raises(KubeApiError, match="the object has been modified") as old:
        c.request("PUT", url, body={**stale, "spec": {"protocol": "tcp"}})
    assert (none.value.status, old.value.status) == (422, 409)
    fresh = {**sd, "metadata": {**sd["metadata"], "resourceVersion": live}, "spec": {"protocol": "tcp"}}
    assert c.request("PUT", url, body=fresh)["spec"] == {"protocol": "tcp"}
    # a built-in kind takes an unconditional update
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "n"}, "data": {"k": "1"}}
    api.seed(c, cm)
    assert c.request("PUT", "/api/v1/namespaces/n/configmaps/a", body={**cm, "data": {"k": "2"}})["data"] == {"k": "2"}


def test_crds_are_served_only_once_the_chart_is_installed(api: FakeApiServer, tmp_path: Path) -> None:
    c = api.cluster(tmp_path)
    from harness.errors import BackendError

    with pytest.raises(BackendError, match=r"does not serve ServiceDefaults .*is Consul installed\?"):
        c.resource("consul.hashicorp.com/v1alpha1", "ServiceDefaults")
    api.install_consul()
    assert c.resource("consul.hashicorp.com/v1alpha1", "ServiceDefaults").plural == "servicedefaults"


def test_a_port_forward_outlives_its_pod_until_the_next_connection(api: FakeApiServer, tmp_path: Path) -> None:
    """kubectl watches nothing: its pod gone, it still listens; the next connection is closed without a byte and
    the process exits "lost connection to pod" (client-go tools/portforward handleConnection closes streamConn on
    an error-stream message; kubernetes/kubernetes#103526, kubectl >= 1.23). The fake used to exit within 0.1 s
    of the pod's death on its own, which hid a relay that reused such a forward unless load delayed it."""
    c = api.cluster(tmp_path)
    api.seed(c, NODES[0], _deployment("a"))
    assert wait_until(lambda: bool(_ready_pods(c)), 60)
    kubesim_tools.install(tmp_path / "bin")
    env = {**os.environ, "FAKE_API": api.url, "FAKE_LOG": str(tmp_path / "log")}
    proc = subprocess.Popen(
        [str(tmp_path / "bin" / "kubectl"), "port-forward", "-n", "n", "deployment/a", ":80"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    assert line.startswith("Forwarding from 127.0.0.1:") and line.strip().endswith("-> 80")
    port = int(line.split(":")[1].split()[0])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.")
    old = c.pods("n")[0]
    c.delete_pod("n", old["metadata"]["name"])  # the Deployment replaces it; the forward is bound to it

    def replaced() -> bool:  # the old pod's containers gone, a new pod Ready
        run = api.sim.pods.get(old["metadata"]["uid"])
        gone = run is None or run.current is None or not run.current.alive
        return gone and any(p["metadata"]["uid"] != old["metadata"]["uid"] for p in _ready_pods(c))

    assert wait_until(replaced, 60)
    assert proc.poll() is None  # and the forward still runs
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        try:
            answer = s.recv(100)
        except ConnectionResetError:  # closed with the request unread: Linux resets (so does Go's conn.Close)
            answer = b""
        assert answer == b""  # accepted, and closed without an answer
    assert proc.wait(timeout=30) == 1
    assert b"lost connection to pod" in proc.stdout.read()


def _running_pod_listener(api: FakeApiServer, c: KubeCluster) -> tuple[dict[str, Any], int]:
    """Deployment `a`'s Ready pod and the loopback port its container listens on for port 80."""
    api.seed(c, NODES[0], _deployment("a"))
    assert wait_until(lambda: bool(_ready_pods(c)), 60)
    (p,) = _ready_pods(c)
    port = api.sim.call(lambda: api.sim.endpoint(p, 80))
    assert port is not None and answers_http(port)
    return p, port


def test_a_force_deleted_pod_leaves_the_api_but_its_containers_run_until_their_grace_ends(
    api: FakeApiServer, tmp_path: Path
) -> None:
    """gracePeriodSeconds=0 (kubernetes pod strategy.go CheckGracefulDelete keeps 0) drops the pod object at once;
    the kubelet kills its containers only later, with the pod's own grace (pod_workers.go
    calculateEffectiveGracePeriod), consul-dataplane draining meanwhile: the ReplicaSet's replacement runs beside a
    "deleted" pod that still answers. The grace ends when the test says (no wall-clock race)."""
    c = api.cluster(tmp_path)
    p, port = _running_pod_listener(api, c)
    uid = p["metadata"]["uid"]
    assert c.delete_pod("n", p["metadata"]["name"], 0)
    assert uid not in {q["metadata"]["uid"] for q in c.pods("n")}  # gone from the API at once
    assert wait_until(lambda: any(q["metadata"]["uid"] != uid for q in _ready_pods(c)), 60)  # replaced
    assert answers_http(port) and api.sim.force_deleted_alive() == [uid]  # and still running beside it
    assert api.sim.call(api.sim.end_force_deleted_grace) == [uid]
    assert wait_until(lambda: not answers_http(port), 10) and api.sim.force_deleted_alive() == []


def test_a_graceful_delete_marks_the_pod_terminating_and_it_leaves_the_api_once_its_containers_stopped(
    api: FakeApiServer, tmp_path: Path
) -> None:
    """Control: a grace of 1 s sets deletionTimestamp and deletionGracePeriodSeconds (CheckGracefulDelete); the
    pod is no Endpoints address from then on, and the kubelet removes the object only after stopping the
    containers: nothing runs that the API no longer shows."""
    c = api.cluster(tmp_path)
    p, port = _running_pod_listener(api, c)
    name = p["metadata"]["name"]
    doc = c.request("DELETE", f"/api/v1/namespaces/n/pods/{name}", query=[("gracePeriodSeconds", "1")])
    assert doc["metadata"]["deletionTimestamp"] and doc["metadata"]["deletionGracePeriodSeconds"] == 1
    assert not api.sim._serving(doc)  # Terminating: out of the Endpoints and the Consul catalog at once
    assert wait_until(lambda: name not in {q["metadata"]["name"] for q in c.pods("n")}, 10)
    assert not answers_http(port)  # stopped before the object went
    assert api.sim.force_deleted_alive() == []


def test_a_verb_rbac_does_not_grant_is_403_with_the_authorizers_message(api: FakeApiServer, tmp_path: Path) -> None:
    """What kube-apiserver answers a request RBAC denies (responsewriters.ForbiddenStatus): 403 Forbidden, the
    resource, verb, group and namespace named; only that verb on that resource."""
    c = api.cluster(tmp_path)
    c.request("POST", "/api/v1/namespaces", body={"metadata": {"name": "consul"}})
    api.sim.forbidden.add(("list", "persistentvolumeclaims"))
    with pytest.raises(KubeApiError) as err:
        c.request("GET", "/api/v1/namespaces/consul/persistentvolumeclaims")
    assert err.value.status == 403
    assert str(err.value).endswith(
        'persistentvolumeclaims is forbidden: User "edge-harness" cannot list resource "persistentvolumeclaims" '
        'in API group "" in the namespace "consul"'
    ), str(err.value)
    api.sim.forbidden = {("list", "storageclasses")}
    with pytest.raises(KubeApiError, match=r'storageclasses.storage.k8s.io is forbidden: .* in API group '
                       r'"storage.k8s.io" at the cluster scope$'):  # fmt: skip
        c.request("GET", "/apis/storage.k8s.io/v1/storageclasses")
    assert c.request("GET", "/api/v1/namespaces/consul/persistentvolumeclaims")["items"] == []  # list granted again


def test_transparent_proxy_is_decided_as_consul_k8s_does_and_closes_plain_traffic_through_a_service(
    api: FakeApiServer, tmp_path: Path
) -> None:
    """consul-k8s v1.9.11 TransparentProxyEnabled: the pod's annotation, else its namespace's label, else the
    injector's default (the chart's: on). A pod it is on for still becomes Ready (its probes reach Envoy), but a
    plain connection through its Service lands on Envoy's mTLS listener and is closed, unless the port is excluded;
    a value ParseBool refuses fails the admission (the Deployment's FailedCreate event)."""
    import httpx

    from tests.kubesim import TPROXY, TPROXY_EXCLUDE_INBOUND

    c = api.cluster(tmp_path)
    node = copy.deepcopy(NODES[0])  # with the label a kubelet gives its node (the server's volume is bound to it)
    node["metadata"]["labels"]["kubernetes.io/hostname"] = node["metadata"]["name"]
    api.seed(c, node)
    api.install_consul()  # the chart's defaults: connectInject.transparentProxy.defaultEnabled true
    # as `up` (helm --wait) does: the server answers before meshed pods are created (the webhook reads
    # proxy-defaults from it for every pod it injects, consul-k8s >= 1.9.2)
    assert wait_until(lambda: bool(c.find_consul()) and c.find_consul().servers_ready == 1, 60)  # type: ignore[union-attr]
    c.request("POST", "/api/v1/namespaces", body={"metadata": {"name": "m", "labels": {TPROXY: "false"}}})

    def meshed(name: str, ns: str, **ann: str) -> list[dict[str, Any]]:
        d = _deployment(name, ns)
        d["spec"]["template"]["metadata"]["annotations"] = {"consul.hashicorp.com/connect-inject": "true", **ann}
        svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
               "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 80}]}}  # fmt: skip
        return [d, svc]

    cases = {  # (namespace, name): (annotations, transparent proxy on)
        ("n", "default"): ({}, True),
        ("n", "off"): ({TPROXY: "false"}, False),
        ("n", "excluded"): ({TPROXY_EXCLUDE_INBOUND: "8080,80"}, True),
        ("m", "label"): ({}, False),
        ("m", "annotation"): ({TPROXY: "true"}, True),  # the annotation wins over the namespace's label
    }
    api.seed(c, *(o for (ns, name), (ann, _on) in cases.items() for o in meshed(name, ns, **ann)))
    api.seed(c, *meshed("bad", "n", **{TPROXY: "yes"}))
    assert wait_until(lambda: len(_ready_pods(c, "n")) == 3 and len(_ready_pods(c, "m")) == 2, 60)
    with httpx.Client(timeout=5) as client:
        for (ns, name), (_ann, on) in cases.items():
            (pod,) = [p for p in c.pods(ns) if p["metadata"]["labels"]["app"] == name]
            assert api.sim.tproxy_on(pod) is on, name
            port = api.sim.call(lambda ns=ns, name=name: api.sim.expose(ns, name))
            try:
                answer = client.get(f"http://127.0.0.1:{port}/").status_code
            except httpx.HTTPError:
                answer = 0
            assert answer == (0 if on and name != "excluded" else 200), name
    assert [(ns, pod.split("-")[0], port) for ns, pod, port in api.sim.tproxy_closed] == [
        ("n", "default", 80),
        ("m", "annotation", 80),
    ]
    assert not [p for p in c.pods("n") if p["metadata"]["labels"]["app"] == "bad"]
    events = c.request("GET", "/api/v1/namespaces/n/events")["items"]
    (refused,) = [e for e in events if e["involvedObject"]["name"] == "bad"]
    assert refused["reason"] == "FailedCreate"
    assert 'strconv.ParseBool: parsing "yes": invalid syntax' in refused["message"]


# -- a kind node's filter table -------------------------------------------------------------


def test_kube_proxys_jumps_go_on_top_once_and_decide_before_the_rules_below_them() -> None:
    """kube-proxy's full sync prepends each absent jump (EnsureRule(Prepend), -C first) and refills only its
    own chains (iptables-restore --noflush); KUBE-FORWARD accepts the masquerade mark 0x4000 and
    RELATED,ESTABLISHED, so a drop below it sees only what it lets through."""
    table = fresh_netns()
    table["CUT"] = ["-s 10.244.4.0/24 -j DROP", "-d 10.244.4.0/24 -j DROP"]
    for c in ("INPUT", "OUTPUT", "FORWARD"):
        table[c].insert(0, "-j CUT")
    kube_proxy_sync(table)
    assert table["FORWARD"][-1] == "-j CUT" and table["FORWARD"][0].endswith("-j KUBE-PROXY-FIREWALL")
    assert table["INPUT"][0] == table["OUTPUT"][0] == "-j KUBE-FIREWALL"  # the kubelet's jumps, prepended last
    assert table["CUT"] == ["-s 10.244.4.0/24 -j DROP", "-d 10.244.4.0/24 -j DROP"]  # another's chain: untouched
    synced = {c: list(r) for c, r in table.items()}
    kube_proxy_sync(table)  # a later full sync finds every jump and moves none
    assert table == synced

    cut, ours = "10.244.4.7", "10.244.3.9"
    assert iptables_verdict(table, "FORWARD", Packet(cut, ours)) == "DROP"  # a new connection reaches CUT
    assert iptables_verdict(table, "FORWARD", Packet(cut, ours, state="ESTABLISHED")) == "ACCEPT"
    assert iptables_verdict(table, "FORWARD", Packet(cut, ours, mark=0x4000)) == "ACCEPT"  # NodePort, DNATed here
    assert iptables_verdict(table, "FORWARD", Packet(cut, ours, state="INVALID")) == "DROP"
    assert iptables_verdict(table, "FORWARD", Packet("10.244.1.5", ours)) == "ACCEPT"  # policy ACCEPT
    assert iptables_verdict(table, "INPUT", Packet("172.18.0.9", "127.0.0.1")) == "DROP"  # KUBE-FIREWALL
    for c in ("INPUT", "OUTPUT", "FORWARD"):  # on top, the drops decide first whatever the state
        table[c].remove("-j CUT")
        table[c].insert(0, "-j CUT")
    assert iptables_verdict(table, "FORWARD", Packet(cut, ours, state="ESTABLISHED", mark=0x4000)) == "DROP"
    six = synced_netns(6)  # ip6tables' table: the same jumps and chains, without the kubelet's IPv4-only firewall
    assert six["KUBE-FORWARD"] == table["KUBE-FORWARD"] and "KUBE-FIREWALL" not in six
    assert six["FORWARD"] == [r for r in table["FORWARD"] if r != "-j CUT"]
    with pytest.raises(ValueError, match="does not model '--to-destination'"):
        iptables_verdict({"FORWARD": ["-j DNAT --to-destination 1.2.3.4"]}, "FORWARD", Packet(cut, ours))


def test_iptables_legacy_without_w_fails_while_another_writer_holds_the_xtables_lock() -> None:
    """iptables-legacy takes /run/xtables.lock for each command: without -w it exits 4 at once while kube-proxy
    or kindnet holds it, `-w N` waits up to N s (iptables/xshared.c, xtables_lock_or_exit); iptables-legacy-restore
    takes it at its `*table` line with its own -w; iptables-nft takes no lock and accepts -w."""

    async def go() -> None:
        t = fresh_netns()
        run = await run_iptables_script(t, "iptables -N X", mode="legacy", locked_for=0.5)
        assert (run.rc, run.err.strip()) == (4, "Another app is currently holding the xtables lock. Perhaps you "
                                                "want to use the -w option?") and "X" not in run.after  # fmt: skip
        start = time.monotonic()
        run = await run_iptables_script(t, "iptables -w 5 -N X", mode="legacy", locked_for=0.5)
        assert run.rc == 0 and "X" in run.after and 0.4 < time.monotonic() - start < 5, run.err
        run = await run_iptables_script(t, "iptables -N X -w 1", mode="legacy", locked_for=3.0)
        assert run.rc == 4 and "Stopped waiting after 1s." in run.err
        run = await run_iptables_script(t, "iptables -w 5 -N X", mode="legacy")  # nobody holds it
        assert run.rc == 0 and "X" in run.after, run.err
        run = await run_iptables_script(run.after, "iptables -w 5 -S X", mode="legacy")
        assert run.rc == 0 and not run.wrote and not run.states, run.err  # only looked
        run = await run_iptables_script(t, "iptables -N X", mode="nf_tables", locked_for=3.0)
        assert run.rc == 0 and "X" in run.after, run.err
        tx = "<<EOF\n*filter\n:X - [0:0]\n-A X -j DROP\nCOMMIT\nEOF\n"
        run = await run_iptables_script(t, "iptables-restore --noflush " + tx, mode="legacy", locked_for=3.0)
        assert run.rc == 4 and "Perhaps you want to use the -w option?" in run.err and "X" not in run.after
        run = await run_iptables_script(t, "iptables-restore -w 1 --noflush " + tx, mode="legacy", locked_for=3.0)
        assert run.rc == 4 and "Stopped waiting after 1s." in run.err and not run.states
        run = await run_iptables_script(t, "iptables-restore --noflush -w 5 " + tx, mode="legacy", locked_for=0.5)
        assert run.rc == 0 and run.after["X"] == ["-j DROP"], run.err
        run = await run_iptables_script(t, "iptables-restore --noflush " + tx, mode="nf_tables", locked_for=3.0)
        assert run.rc == 0 and run.after["X"] == ["-j DROP"], run.err

    asyncio.run(go())


def test_iptables_restore_is_one_commit_all_or_nothing_and_noflush_flushes_only_the_chains_it_names() -> None:
    """iptables-restore applies a table's lines to one handle and commits them at COMMIT (TC_COMMIT replaces the
    table; iptables-nft-restore: one nf_tables transaction): the kernel never shows a state between its lines, and
    a line that fails ("line N failed", exit 1) or a missing COMMIT leaves the table as it was. With --noflush a
    `:CHAIN - [0:0]` line creates the chain or flushes that one (flush_entries; nft_cmd_chain_restore), nothing
    else; without it the `*filter` line flushes every chain and deletes the user chains. Single iptables commands
    are one commit each: a packet between two of them meets the table the first left."""
    cut, ours = "10.244.4.0", "10.244.3.9"

    async def go() -> None:
        table = fresh_netns()
        table["OTHER"] = ["-j RETURN"]
        table["CUT"] = ["-s 10.244.9.0/24 -j DROP", "-s 10.244.4.0/24 -j DROP"]
        table["FORWARD"] = ["-j CUT", "-j OTHER"]
        # control: refilled command by command, the chain is empty after the first of three commits
        steps = "set -e\niptables -F CUT\n" + "".join(f"iptables -A CUT {m} {cut}/24 -j DROP\n" for m in ("-s", "-d"))
        run = await run_iptables_script(table, steps)
        assert run.rc == 0 and [f for f, _ in run.states] == [4, 4, 4], run.err
        verdicts = [iptables_verdict(t, "FORWARD", Packet(cut, ours)) for _, t in run.states]
        assert verdicts == ["ACCEPT", "DROP", "DROP"]  # the first commit: CUT empty, the packet passes

        tx = ("*filter\n# the chain's new rules\n:CUT - [0:0]\n:FORWARD ACCEPT [0:0]\n-A CUT -s 10.244.4.0/24 -j DROP\n"
              "-A CUT -d 10.244.4.0/24 -j DROP\n-D FORWARD -j CUT\n-I FORWARD 1 -j CUT\nCOMMIT\n")  # fmt: skip
        run = await run_iptables_script(table, f"iptables-restore --noflush <<EOF\n{tx}EOF\n")
        assert run.rc == 0 and len(run.states) == 1 and run.states[0] == (4, run.after), run.err
        assert run.after["CUT"] == ["-s 10.244.4.0/24 -j DROP", "-d 10.244.4.0/24 -j DROP"]  # flushed, refilled
        assert run.after["OTHER"] == ["-j RETURN"] and run.after["FORWARD"] == ["-j CUT", "-j OTHER"]  # untouched
        assert iptables_verdict(run.states[0][1], "FORWARD", Packet(cut, ours)) == "DROP"
        assert not run.after6["INPUT"] and set(run.after6) == set(BUILTIN_CHAINS)  # ip6tables' table: its own
        fresh_tx = tx.replace("-D FORWARD -j CUT", "")  # (no jump to delete where nothing is set)
        new = await run_iptables_script(fresh_netns(), f"iptables-restore --noflush <<EOF\n{fresh_tx}EOF\n")
        assert new.rc == 0 and new.after["CUT"] == run.after["CUT"], new.err  # a chain it names is created

        failed = tx.replace("-I FORWARD 1 -j CUT", "-A NOPE -j DROP")  # the chain does not exist: line 8 fails
        run = await run_iptables_script(table, f"iptables-restore --noflush <<EOF\n{failed}EOF\n")
        assert (run.rc, run.after, run.states) == (1, table, []) and "iptables-restore: line 8 failed" in run.err
        run = await run_iptables_script(table, "iptables-restore --noflush <<EOF\n*filter\n:CUT - [0:0]\nEOF\n")
        assert (run.rc, run.after, run.states) == (1, table, []) and "COMMIT expected at line 3" in run.err
        run = await run_iptables_script(table, f"iptables-restore <<EOF\n{fresh_tx}EOF\n")
        assert run.rc == 0 and "OTHER" not in run.after and run.after["FORWARD"] == ["-j CUT"], run.err  # no --noflush
        run = await run_iptables_script(table, f"ip6tables-restore -n <<EOF\n{fresh_tx}EOF\n")
        assert run.rc == 0 and run.after == table and run.after6["CUT"] and run.states[0][0] == 6, run.err
        run = await run_iptables_script(table, "iptables -S >&2")  # the whole table, as a script reads it back
        assert run.rc == 0 and not run.states and run.err.splitlines() == [
            "-P INPUT ACCEPT", "-P FORWARD ACCEPT", "-P OUTPUT ACCEPT", "-N CUT", "-N OTHER",
            "-A FORWARD -j CUT", "-A FORWARD -j OTHER",
            "-A CUT -s 10.244.9.0/24 -j DROP", "-A CUT -s 10.244.4.0/24 -j DROP", "-A OTHER -j RETURN",
        ]  # fmt: skip

    asyncio.run(go())

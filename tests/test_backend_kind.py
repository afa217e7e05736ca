"""Contract tests of the kind backend: fake `kind`/`helm`/`docker`/`kubectl` on PATH + the fake API server.

The fake tools record their argv and answer the way the real ones do (kind
writes a kubeconfig, kubectl port-forward prints "Forwarding from" and keeps
running), so the exact commands a real run would issue are pinned here
without Docker.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from harness.backends.kind import KindBackend, kind_available
from harness.errors import BackendError
from tests.kubefake import NODES, FakeApiServer, lax_pod, rendered, wait_until
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest

FAKE_TOOL = f"""#!{sys.executable}
import json, os, sys, time
name = os.path.basename(sys.argv[0])
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps([name, *args]) + "\\n")
state = os.environ["FAKE_STATE"]
clusters_file = os.path.join(state, "clusters")
clusters = open(clusters_file).read().split() if os.path.exists(clusters_file) else []
if name == "docker" and args[:1] == ["info"]:
    if os.environ.get("FAKE_DOCKER_DOWN"):
        print("Cannot connect to the Docker daemon at unix:///var/run/docker.sock.", file=sys.stderr)
        sys.exit(1)
    print("27.3.1")
elif name == "kind" and args[:2] == ["get", "clusters"]:
    print("\\n".join(clusters) if clusters else "No kind clusters found.", file=sys.stdout if clusters else sys.stderr)
elif name == "kind" and args[:2] == ["create", "cluster"]:
    cname = args[args.index("--name") + 1]
    kc = args[args.index("--kubeconfig") + 1]
    ctx = "kind-" + cname
    with open(kc, "w") as f:
        json.dump({{"apiVersion": "v1", "kind": "Config", "current-context": ctx,
                   "clusters": [{{"name": ctx, "cluster": {{"server": os.environ["FAKE_API"]}}}}],
                   "users": [{{"name": ctx, "user": {{"token": "x"}}}}],
                   "contexts": [{{"name": ctx, "context": {{"cluster": ctx, "user": ctx}}}}]}}, f)
    open(clusters_file, "w").write("\\n".join(clusters + [cname]))
elif name == "kind" and args[:2] == ["delete", "cluster"]:
    cname = args[args.index("--name") + 1]
    open(clusters_file, "w").write("\\n".join(c for c in clusters if c != cname))
elif name == "kubectl" and "port-forward" in args and os.environ.get("FAKE_PF_FAIL"):
    print("error: unable to forward port because pod is not running. Current status=Pending", file=sys.stderr)
    sys.exit(1)
elif name == "kubectl" and "port-forward" in args:
    local = args[-1].split(":")[0]
    print(f"Forwarding from 127.0.0.1:{{local}} -> 80", flush=True)
    time.sleep(3600)
elif name == "docker" and args[:1] == ["exec"] and os.environ.get("FAKE_EXEC_FAIL"):
    print("Error response from daemon: container is not running", file=sys.stderr)
    sys.exit(1)
"""


class Tools:
    def __init__(self, root: Path, api: FakeApiServer, names: tuple[str, ...]) -> None:
        self.bin = root / "bin"
        self.bin.mkdir()
        self.state = root / "toolstate"
        self.state.mkdir()
        self.log = root / "argv.jsonl"
        script = root / "fake_tool.py"
        script.write_text(FAKE_TOOL)
        script.chmod(0o755)
        for n in names:
            (self.bin / n).symlink_to(script)
        self.env = {
            "PATH": str(self.bin),
            "FAKE_LOG": str(self.log),
            "FAKE_STATE": str(self.state),
            "FAKE_API": api.url,
        }

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(x) for x in self.log.read_text().splitlines()]

    def reset(self) -> None:
        self.log.unlink(missing_ok=True)


@pytest.fixture
def tools(api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Tools:
    t = Tools(tmp_path, api, ("kind", "helm", "docker", "kubectl"))
    for k, v in t.env.items():
        monkeypatch.setenv(k, v)
    return t


def _controller(api: FakeApiServer, backend: KindBackend, stop: threading.Event) -> None:
    """Plays the Deployment controller: marks every Deployment ready once it appears."""
    done: set[str] = set()
    while not stop.is_set():
        if backend.kubeconfig.is_file():
            try:
                c = backend.cluster
                for d in (c.request("GET", "/apis/apps/v1/deployments") or {}).get("items", []):
                    key = f"{d['metadata']['namespace']}/{d['metadata']['name']}"
                    if key not in done:
                        c.request(
                            "PATCH",
                            f"/apis/apps/v1/namespaces/{key.replace('/', '/deployments/')}",
                            body={"status": {"readyReplicas": d["spec"]["replicas"]}},
                            content_type="application/merge-patch+json",
                        )
                        done.add(key)
            except BackendError:
                pass
        time.sleep(0.3)


def _up(api: FakeApiServer, tools: Tools, tmp_path: Path) -> tuple[KindBackend, Any]:
    m = rendered(tmp_path)
    wd = tmp_path / "wd"
    backend = KindBackend("edge", wd, ready_timeout_s=60)
    # the nodes kind would have registered (names as kind gives them)
    seed = api.cluster(tmp_path)
    api.seed(seed, *NODES)
    stop = threading.Event()
    t = threading.Thread(target=_controller, args=(api, backend, stop), daemon=True)
    t.start()
    try:
        backend.up(m)
    finally:
        stop.set()
        t.join()
    return backend, m


def test_up_issues_exactly_the_expected_commands(api: FakeApiServer, tools: Tools, tmp_path: Path) -> None:
    _backend, m = _up(api, tools, tmp_path)
    wd = tmp_path / "wd"
    kc = str(wd / "kubeconfig")
    calls = tools.calls()
    assert calls[:4] == [
        ["kind", "get", "clusters"],
        ["kind", "create", "cluster", "--name", "edge", "--config", str(wd / "kind-config.yaml"), "--kubeconfig", kc],
        ["helm", "repo", "add", "hashicorp", "https://helm.releases.hashicorp.com", "--force-update"],
        [
            "helm", "upgrade", "--install", "consul", "hashicorp/consul", "--version", "1.9.11", "-n", "consul",
            "--create-namespace", "-f", str(wd / "consul-values.yaml"), "--kubeconfig", kc,
            "--wait", "--timeout", "15m",
        ],
    ]  # fmt: skip
    execs = calls[4:]
    assert [c[:5] for c in execs] == [
        ["docker", "exec", n, "sh", "-c"] for n in ("edge-worker3", "edge-worker4", "edge-worker5")
    ]
    # the kind config written is the rendered one, named after the cluster
    import yaml

    written = yaml.safe_load((wd / "kind-config.yaml").read_text())
    assert written == {**m.kind_config, "name": "edge"}
    assert yaml.safe_load((wd / "consul-values.yaml").read_text()) == m.helm_values
    # every rendered object reached the API (namespaces applied once before helm, then all)
    posts = [d for meth, _p, d in api.writes() if meth == "POST" and d.get("kind") not in ("Node",)]
    assert len([d for d in posts if d["kind"] != "Namespace"]) == len(
        [o for o in m.objects if o["kind"] != "Namespace"]
    )
    # lax-1a's script: other LZs dropped both ways, Region peers delayed by the service link (12 ms)
    lax = execs[0][5]
    for cidr in ("172.18.0.5/32", "10.244.4.0/24", "172.18.0.6/32", "10.244.5.0/24"):
        assert f"iptables -A EH-CHAOS -d {cidr} -j DROP" in lax and f"iptables -A EH-CHAOS -s {cidr} -j DROP" in lax
    assert "10.244.1.0/24 -j DROP" not in lax and "172.18.0.7/32 -j DROP" not in lax
    assert "tc qdisc add dev eth0 parent 1:4 handle 40: netem delay 12ms\n" in lax
    for cidr in ("172.18.0.2/32", "10.244.1.0/24", "10.244.2.0/24", "172.18.0.7/32", "10.244.0.0/24"):
        assert f"u32 match ip dst {cidr} flowid 1:4" in lax
    assert "match ip dst 10.244.4.0/24" not in lax


def test_up_reuses_an_existing_cluster(api: FakeApiServer, tools: Tools, tmp_path: Path) -> None:
    (tools.state / "clusters").write_text("edge")
    (tmp_path / "wd").mkdir()
    api.write_kubeconfig(tmp_path / "wd" / "kubeconfig", "kind-edge")
    _up(api, tools, tmp_path)
    assert [c for c in tools.calls() if c[0] == "kind"] == [["kind", "get", "clusters"]]


def test_chaos_commands(api: FakeApiServer, tools: Tools, tmp_path: Path) -> None:
    backend, _m = _up(api, tools, tmp_path)
    tools.reset()
    backend.kill_node("edge-worker3")
    backend.restore_node("edge-worker3")
    backend.zone_outage("us-west-2a")
    backend.restore_zone("us-west-2a")
    calls = tools.calls()
    assert calls[0] == ["docker", "stop", "edge-worker3"]
    assert calls[1] == ["docker", "start", "edge-worker3"]
    assert calls[2][:4] == ["docker", "exec", "edge-worker3", "sh"]  # rules re-imposed on the fresh netns
    assert calls[3:] == [["docker", "stop", "edge-worker"], ["docker", "start", "edge-worker"]]  # AZ: no edge rules

    tools.reset()
    backend.partition_zone("us-west-2-lax-1a")
    backend.set_link("us-west-2-lax-1a", 150, 5)
    script = tools.calls()[-1][5]
    for cidr in ("172.18.0.2/32", "10.244.1.0/24", "172.18.0.7/32"):
        assert f"iptables -A EH-CHAOS -d {cidr} -j DROP" in script  # partitioned from the Region
    assert "netem delay 150ms loss 5%" in script
    backend.heal_zone("us-west-2-lax-1a")
    backend.clear_link("us-west-2-lax-1a")
    script = tools.calls()[-1][5]
    assert "172.18.0.2/32 -j DROP" not in script and "netem delay 12ms\n" in script
    assert all(c[2] == "edge-worker3" for c in tools.calls())

    with pytest.raises(BackendError, match="us-west-2a is not an edge zone"):
        backend.partition_zone("us-west-2a")
    with pytest.raises(BackendError, match="no nodes in zone us-west-2-nowhere-1a"):
        backend.zone_outage("us-west-2-nowhere-1a")
    assert backend.nodes()["edge-worker4"] == "us-west-2-las-1a"


def test_failed_tool_is_a_clear_error(
    api: FakeApiServer, tools: Tools, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, _m = _up(api, tools, tmp_path)
    monkeypatch.setenv("FAKE_EXEC_FAIL", "1")
    with pytest.raises(
        BackendError, match=r"^`docker exec edge-worker3 sh -c <script>` failed \(exit 1\): .*container is not running"
    ):
        backend.partition_zone("us-west-2-lax-1a")


def test_pod_chaos_and_inventory_through_the_api(api: FakeApiServer, tools: Tools, tmp_path: Path) -> None:
    backend, _m = _up(api, tools, tmp_path)
    c = backend.cluster
    api.seed(c, lax_pod("pa-1", "10.244.3.9"))
    inv = backend.inventory(tmp_path / "inv.jsonl")
    assert inv.by_ip("10.244.3.9") is not None
    assert backend.set_pod_unready("us-west-2-lax-1a", "product-api") == ["pa-1"]
    assert backend.set_pod_ready("us-west-2-lax-1a", "product-api") == ["pa-1"]
    assert backend.kill_pod("us-west-2-lax-1a", "product-api") == ["pa-1"]
    assert wait_until(lambda: (inv.get("pa-1") is not None) and inv.get("pa-1").ended is not None)  # type: ignore[union-attr]
    st = backend.status()
    assert st.backend == "kind" and "kind cluster edge" in st.detail
    assert [s.pod for s in backend.log_sources()] == []
    backend.close()


def test_entrypoints_port_forward_per_zone_and_stop_by_pid(api: FakeApiServer, tools: Tools, tmp_path: Path) -> None:
    backend, m = _up(api, tools, tmp_path)
    tools.reset()
    urls = backend.entrypoints()
    assert set(urls) == {z.name for z in m.topology.zones}
    pfs = [c for c in tools.calls() if c[0] == "kubectl"]
    lax = next(c for c in pfs if "deployment/frontend-lax-1a" in c)
    port = urls["us-west-2-lax-1a"].rsplit(":", 1)[1]
    assert lax == [
        "kubectl", "--kubeconfig", str(backend.kubeconfig), "port-forward", "--address", "127.0.0.1",
        "-n", "hashicups-lax-1a", "deployment/frontend-lax-1a", f"{port}:80",
    ]  # fmt: skip
    assert any("deployment/frontend-2a" in c for c in pfs)
    state = json.loads((tmp_path / "wd" / "state.json").read_text())
    pids = [pf["pid"] for pf in state["portForwards"].values()]
    assert all(Path(f"/proc/{p}").exists() for p in pids)
    tools.reset()
    assert backend.entrypoints() == urls  # running ones are reused
    assert tools.calls() == []
    backend.stop_entrypoints()
    assert wait_until(lambda: not any(Path(f"/proc/{p}").exists() for p in pids), 10)
    tools.reset()
    backend.down()
    assert tools.calls() == [["kind", "delete", "cluster", "--name", "edge", "--kubeconfig", str(backend.kubeconfig)]]
    assert not (tmp_path / "wd" / "state.json").exists()


def test_missing_tools_are_one_clear_line(api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t = Tools(tmp_path, api, ("kind", "docker"))
    for k, v in t.env.items():
        monkeypatch.setenv(k, v)
    backend = KindBackend("edge", tmp_path / "wd")
    with pytest.raises(BackendError, match=r"^kind backend needs `helm` on PATH \(https://helm.sh"):
        backend.up(rendered(tmp_path))
    assert kind_available() == (False, "helm not found on PATH")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(BackendError, match=r"^kind backend needs `docker` on PATH"):
        backend.check_tools()
    with pytest.raises(BackendError, match="no kubeconfig at"):
        backend.kill_pod("z", "s")


def test_kind_available_reports_the_docker_daemon(tools: Tools, monkeypatch: pytest.MonkeyPatch) -> None:
    assert kind_available() == (True, "Docker 27.3.1 answers and kind, helm, kubectl are installed")
    monkeypatch.setenv("FAKE_DOCKER_DOWN", "1")
    ok, why = kind_available()
    assert (
        not ok
        and why == "Docker daemon not usable: Cannot connect to the Docker daemon at unix:///var/run/docker.sock."
    )
    assert os.environ["PATH"] == str(tools.bin)


def test_enterprise_needs_a_licence_secret_before_helm(
    api: FakeApiServer, tools: Tools, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.render import render, write
    from harness.render.manifests import load
    from harness.topology.model import load_topology

    write(render(load_topology(), "enterprise"), tmp_path / "ent")
    m = load(tmp_path / "ent")
    backend = KindBackend("edge", tmp_path / "wd")
    monkeypatch.delenv("CONSUL_LICENSE", raising=False)
    monkeypatch.delenv("CONSUL_LICENSE_PATH", raising=False)
    with pytest.raises(BackendError, match=r"^edition enterprise needs a licence: set CONSUL_LICENSE"):
        backend.up(m)
    assert not any(c[0] == "helm" for c in tools.calls())
    monkeypatch.setenv("CONSUL_LICENSE_PATH", str(tmp_path / "nope.hclic"))
    with pytest.raises(BackendError, match=r"^CONSUL_LICENSE_PATH .*nope\.hclic: No such file"):
        backend.up(m)
    (tmp_path / "lic.hclic").write_text("02MV4UU43BK5HGYYTOJZ\n")
    monkeypatch.setenv("CONSUL_LICENSE_PATH", str(tmp_path / "lic.hclic"))
    monkeypatch.setenv("PATH", str(tools.bin))
    (tools.bin / "helm").unlink()  # stop right after the licence: helm "missing" is checked first, so fake a failure
    (tools.bin / "helm").write_text("#!/bin/sh\necho 'Error: INSTALLATION FAILED: timed out' >&2\nexit 1\n")
    (tools.bin / "helm").chmod(0o755)
    with pytest.raises(
        BackendError, match=r"^`helm repo add hashicorp .*` failed \(exit 1\): Error: INSTALLATION FAILED"
    ):
        backend.up(m)
    secret = next(d for meth, _p, d in api.writes() if meth == "POST" and d.get("kind") == "Secret")
    assert secret["metadata"] == {"name": "consul-ent-license", "namespace": "consul"}
    assert secret["stringData"] == {"key": "02MV4UU43BK5HGYYTOJZ"}


def test_status_port_forward_failure_and_kubeconfig_export(
    api: FakeApiServer, tools: Tools, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = KindBackend("edge", tmp_path / "wd")
    st = backend.status()
    assert (st.up, st.detail) == (False, "kind cluster edge does not exist")
    with pytest.raises(BackendError, match="no manifests recorded"):
        backend.entrypoints()
    # cluster exists but this workdir has no kubeconfig yet: it is exported, not re-created
    (tools.state / "clusters").write_text("edge")
    (tmp_path / "wd").mkdir()
    with pytest.raises(BackendError):
        backend.up(rendered(tmp_path))  # the fake `kind export` writes nothing: the API step fails
    assert ["kind", "export", "kubeconfig", "--name", "edge", "--kubeconfig", str(backend.kubeconfig)] in tools.calls()
    assert not any(c[:3] == ["kind", "create", "cluster"] for c in tools.calls())

    (tools.state / "clusters").unlink()
    (tmp_path / "second").mkdir()
    backend2, _m = _up(api, tools, tmp_path / "second")
    monkeypatch.setenv("FAKE_PF_FAIL", "1")
    with pytest.raises(
        BackendError,
        match=r"^kubectl port-forward to hashicups-las-1a/frontend-las-1a \(us-west-2-las-1a\) "
        r"did not start: error: unable",
    ):
        backend2.entrypoints()


def test_from_options(tmp_path: Path) -> None:
    from harness.backends import BackendOptions

    b = KindBackend.from_options(BackendOptions(name="kind", cluster="ci", workdir=tmp_path))
    assert (b.cluster_name, b.workdir, b.kubeconfig) == (
        "ci",
        tmp_path / "kind-ci",
        tmp_path / "kind-ci" / "kubeconfig",
    )

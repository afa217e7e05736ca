"""The fake Kubernetes API server and fixtures shared by the kube, kind and existing backend tests.

`FakeApiServer` is kmock's KubernetesEmulator served over real HTTP from a
thread, so the official client, urllib3 streaming and our REST paths are all
exercised for real; behind it runs `tests.kubesim.ClusterSim`, which makes it
behave like a cluster where the harness depends on it (resourceVersion and
watch semantics, scheduling, pod IPs and the Ready condition, replacement of
killed pods, node loss, container logs that grow, consul-k8s' CRD status,
the chart, kind's nodes and port mappings; see that module's docstring for
the sources). kmock is kept for what it does well: request parsing, the
request log the tests assert on, and API discovery. kmock cannot route
`/api/v1/namespaces[/NAME]` (it takes `namespaces` as the namespace
segment): `parse_path` is wrapped for exactly those two paths.

A test module gets the `api` fixture by importing it as `api as api` (an
explicit re-export, so pytest finds it and linters see it used); likewise
`nothing_refused`, which fails a test whose identity under `grant` (the
shipped RBAC role) was refused a call.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import kmock
import pytest
import yaml
from kmock._internal import apps, parsing

from harness.backends.kube import LABEL_SERVING, KubeCluster, api_client_from_kubeconfig
from harness.render import render, write
from harness.render.manifests import Manifests, load
from harness.topology.model import load_topology
from tests import kubesim_tools
from tests.kubesim import SELF_ACCESS_REVIEWS, ClusterSim, SimTimings

_orig_parse_path = parsing.parse_path


def _parse_path(path: str) -> parsing.ParsedPath:
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and len(parts) in (3, 4):
        return parsing.ParsedPath("", "v1", "namespaces", None, parts[3] if len(parts) == 4 else None, None)
    return _orig_parse_path(path)


@attrs.define(kw_only=True)
class SimEmulator(kmock.KubernetesEmulator):  # type: ignore[misc]
    """kmock's emulator with the simulation in front: it serves what it owns, kmock the rest (discovery)."""

    sim: Any = attrs.field(default=None)

    async def _handle(self, request: Any) -> Any:
        if self.sim is not None:
            resp = await self.sim.maybe_serve(request)
            if resp is not None:
                return resp
        return await apps.RawHandler._handle(self, request)


class FakeApiServer:
    """The simulated cluster's API on 127.0.0.1:<free port>, run from a background thread."""

    def __init__(self, timings: SimTimings | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self.sim = ClusterSim(timings)
        self.kmock: SimEmulator
        self.port = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> FakeApiServer:
        parsing.parse_path = _parse_path
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("fake API server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stopped is not None
        self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(timeout=15)
        parsing.parse_path = _orig_parse_path

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stopped = asyncio.Event()
        async with SimEmulator(sim=self.sim) as k, kmock.Server(k) as server:
            self.kmock = k
            self.port = server.port
            self.sim.attach(k, asyncio.get_running_loop())
            self._ready.set()
            await self._stopped.wait()
            await self.sim.close()

    # -- what older tests used directly --------------------------------------------
    @property
    def log_replies(self) -> dict[str, list[Any]]:
        """Canned answers of successive log calls per pod (instead of the pod's real container log)."""
        return self.sim.log_replies

    @property
    def log_calls(self) -> list[dict[str, str]]:
        return self.sim.log_calls

    # -- helpers for tests -----------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_kubeconfig(self, path: Path, context: str = "fake") -> Path:
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": context, "cluster": {"server": self.url}}],
                    "users": [{"name": context, "user": {"token": self.token(context)}}],
                    "contexts": [{"name": context, "context": {"cluster": context, "user": context}}],
                    "current-context": context,
                }
            )
        )
        return path

    @staticmethod
    def token(context: str) -> str:
        """The bearer token of `context`'s user in the kubeconfigs written here: one identity per context."""
        return f"token-{context}"

    def grant(self, context: str, rules: Iterable[dict[str, Any]]) -> None:
        """Authorize `context`'s identity by `rules` alone (RBAC's allow-list); every other context stays admin."""
        granted = [dict(r) for r in rules]
        self.sim.call(lambda: self.sim.rbac.__setitem__(self.token(context), granted))

    def cluster(self, tmp_path: Path, context: str = "fake") -> KubeCluster:
        kc = self.write_kubeconfig(tmp_path / f"kubeconfig-{context}", context)
        return KubeCluster(api_client_from_kubeconfig(kc, context))

    def requests(self) -> list[tuple[str, str, dict[str, str], Any]]:
        """(method, path, query, body) of every request so far, in arrival order."""
        return [(str(r.method.value), r.url.path, dict(r.params), r.data) for r in self.raw_requests()]

    def raw_requests(self) -> list[kmock.Request]:
        return list(self.kmock)

    def writes(self) -> list[tuple[str, str, Any]]:
        """Requests that change the cluster (a SelfSubjectAccessReview is a POST that changes nothing; so is a
        dry run, `?dryRun=All`, which runs admission and stores nothing)."""
        return [
            (m, p, d)
            for m, p, q, d in self.requests()
            if m in ("POST", "PATCH", "DELETE") and p.rstrip("/") != SELF_ACCESS_REVIEWS and q.get("dryRun") != "All"
        ]

    def install_consul(self, values: dict[str, Any] | None = None, namespace: str = "consul") -> None:
        """What `helm install` of the consul chart leaves behind (CRDs served, server, injector)."""
        self.sim.call(lambda: self.sim.install_consul(values or {}, namespace=namespace))

    def through_albs(self, answer: Callable[[str], str]) -> Callable[[str], str]:
        """`answer` (`harness.backends.kube.backend.entry_answer`) with the simulated ALBs' DNS: a URL on an ALB's
        name goes to the listener in front of its Service once the ALB routes, and finds no such name while it is
        `provisioning` or after it is gone (`ClusterSim.alb_port`); any other URL is left to `answer`."""

        def via(url: str) -> str:
            host = urlsplit(url).hostname or ""
            if not host.endswith(".elb.amazonaws.com"):
                return answer(url)
            port = self.sim.call(lambda: self.sim.alb_port(host))
            if port is None:
                return f"probe: ConnectError: [Errno -2] Name or service not known ({host})"
            return answer(f"http://127.0.0.1:{port}/")

        return via

    def seed(self, cluster: KubeCluster, *objs: dict[str, Any]) -> None:
        """Apply objects as a test's precondition; their namespaces are created first (a real API refuses otherwise)."""
        for ns in {
            str((o.get("metadata") or {}).get("namespace")) for o in objs if (o.get("metadata") or {}).get("namespace")
        }:
            self.sim.call(lambda ns=ns: self.sim.ensure_namespace(ns))
        for o in objs:
            cluster.apply_one(o)


def node(name: str, zone: str, zone_type: str, ip: str, cidr: str, region: str = "us-west-2") -> dict[str, Any]:
    labels = {"topology.kubernetes.io/region": region, "topology.kubernetes.io/zone": zone}
    if zone_type:
        labels["edge-harness.io/zone-type"] = zone_type
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {"podCIDR": cidr},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
    }


def pod(
    name: str,
    ns: str,
    zone: str,
    app: str,
    consul: str,
    ip: str | None,
    node_name: str,
    *,
    serving: bool = True,
    phase: str = "Running",
) -> dict[str, Any]:
    labels = {"app": app, "edge-harness.io/zone": zone, "edge-harness.io/consul-service": consul}
    if serving:
        labels[LABEL_SERVING] = "true"
    status: dict[str, Any] = {"phase": phase, "startTime": "2026-11-25T20:00:00Z"}
    if ip:
        status["podIP"] = ip
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": node_name, "containers": [{"name": app}, {"name": "consul-dataplane"}]},
        "status": status,
    }


def lax_pod(name: str, ip: str, node_name: str = "edge-worker3", app: str = "product-api") -> dict[str, Any]:
    """A pod of `app` in the lax-1a Local Zone's namespace: the zone most tests aim chaos at."""
    return pod(name, "hashicups-lax-1a", "us-west-2-lax-1a", app, f"{app}-lax-1a", ip, node_name)


T0 = datetime(2026, 11, 25, 20, 0, 0, tzinfo=UTC).timestamp()  # pods' startTime

NODES = [
    node("edge-worker", "us-west-2a", "availability-zone", "172.18.0.2", "10.244.1.0/24"),
    node("edge-worker2", "us-west-2b", "availability-zone", "172.18.0.3", "10.244.2.0/24"),
    node("edge-worker3", "us-west-2-lax-1a", "local-zone", "172.18.0.4", "10.244.3.0/24"),
    node("edge-worker4", "us-west-2-las-1a", "local-zone", "172.18.0.5", "10.244.4.0/24"),
    node("edge-worker5", "us-west-2-phx-2a", "local-zone", "172.18.0.6", "10.244.5.0/24"),
    node("edge-control-plane", "", "", "172.18.0.7", "10.244.0.0/24"),
]


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    with FakeApiServer() as server:
        yield server


@pytest.fixture
def nothing_refused(request: pytest.FixtureRequest) -> Iterator[None]:
    """After the test: no call of an identity under `FakeApiServer.grant` was refused (the test's `api`, if any).

    Checked on the fake's record, not on the outcome: some refusals are
    swallowed (the inventory watch retries any error, a probe pod is waited
    for through errors), and a test would pass where the run is degraded.
    """
    sim = request.getfixturevalue("api").sim if "api" in request.fixturenames else None
    yield
    if sim is not None:
        assert sim.rbac_denials == [], "refused: the granted role lacks these calls"


OPERATOR_ENV = ("EH_ENTRYPOINTS", "EH_ALLOW_CONTEXTS", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE", "CONSUL_CACERT")
"""The operator's settings a harness run reads from its environment: a test that sets none must not inherit them."""


def fake_tools(api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unset: Iterable[str] = ()) -> Path:
    """The fake kind/docker/helm/kubectl (`tests.kubesim_tools`) first on PATH, answering from `api`'s cluster,
    and `unset` removed from the environment. Returns the file each call's argv is logged to (FAKE_LOG)."""
    bindir = tmp_path / "bin"
    kubesim_tools.install(bindir)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_API", api.url)
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "argv.jsonl"))
    for k in unset:
        monkeypatch.delenv(k, raising=False)
    return tmp_path / "argv.jsonl"


@functools.cache
def _default_files() -> tuple[tuple[str, bytes], ...]:
    """The default topology's rendered files (relative path, bytes), rendered once per test process.

    Why: rendering is mostly YAML emitting, ~1.5 s each time on a nice-19 worker, and dozens of tests render
    the same default topology; the render is a pure function of the topology file, so its bytes are kept
    (immutable) and each test still gets its own directory and its own loaded `Manifests`.
    """
    return tuple((rel, text.encode("utf-8")) for rel, text in render(load_topology()).files().items())


def rendered(tmp_path: Path) -> Manifests:
    """The default topology rendered into `tmp_path` and loaded, as `harness render` would leave it."""
    out = tmp_path / "rendered"
    if out.exists():  # a second render into the same place: `write` replaces what the first one left
        write(render(load_topology()), out)
        return load(out)
    for rel, data in _default_files():  # what `write` writes into a new directory
        p = out / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return load(out)

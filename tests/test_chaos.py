"""Chaos: experiments by role, checked before anything starts; actions write the timeline in contract order.

Everything here runs without a cluster: a fake backend stands in for the
protocol (inventory with `ready` events, chaos primitives that record when
they were called), and chaostoolkit itself runs for the run-directory tests
with `process` activities that need no backend.
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.backends import BackendOptions
from harness.backends.base import CHAOS_PRIMITIVES, AdminAnswers, Status, each_admin
from harness.backends.kube.backend import ENTRY_PROBE_TIMEOUT
from harness.chaos import actions, check_experiment, judge_journal, plan_run, probes, run_experiment
from harness.chaos.roles import RoleError, parse_role, resolve_values, resolve_zone
from harness.chaos.timeline import FaultKind, record, takes_entry_down
from harness.contract.inventory import Inventory, PodInfo
from harness.contract.users import ANSWER_TIMEOUT_S, CONNECT_TIMEOUT_S, PROBE_ENDPOINT
from harness.errors import BackendError, InputError
from harness.topology import load_topology
from tests.conftest import REPO, wait_until

EXPERIMENTS = sorted((REPO / "experiments").glob("*.json"))
TOPOLOGIES = [REPO / "fixtures" / f for f in ("topology.yaml", "topology-wide.yaml", "topology-eu.yaml")]
LAX = "us-west-2-lax-1a"
DEFAULT = load_topology(REPO / "fixtures" / "topology.yaml")
WIDE = load_topology(REPO / "fixtures" / "topology-wide.yaml")


# -- experiments: valid chaostoolkit files, zones by role ---------------------------------------------
@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_experiment_validates_with_chaostoolkit(path: Path) -> None:
    check_experiment(path)
    chaos = Path(sys.executable).with_name("chaos")
    r = subprocess.run([str(chaos), "--no-log-file", "validate", str(path)], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.DEVNULL, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads(path.read_text())
    # every destructive action has a way back: a rollback, or it restores by itself (kill_pod waits for the replacement)
    funcs = {a["provider"]["func"] for a in data["method"]}
    rollbacks = {a["provider"]["func"] for a in data.get("rollbacks", [])}
    pairs = {"make_unready": "make_ready", "kill_node": "restore_node", "zone_outage": "restore_zone",
             "degrade_link": "clear_link", "partition_zone": "heal_zone"}  # fmt: skip
    for f in funcs & pairs.keys():
        assert pairs[f] in rollbacks, f"{path.name}: {f} without rollback {pairs[f]}"
    # plain `chaos run` closes the shared backend through the control
    assert {"name": "edge-harness", "provider": {"type": "python", "module": "harness.chaos.control"}} in data[
        "controls"
    ]


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_shipped_experiments_name_no_zone_only_roles(path: Path) -> None:
    text = path.read_text()
    for topo in TOPOLOGIES:
        for z in load_topology(topo).zones:
            assert f'"{z.name}"' not in text, f"{path.name} names {z.name}: use a role"
    for key, value in json.loads(text).get("configuration", {}).items():
        assert parse_role(value) is not None, (key, value)


@pytest.mark.parametrize("topo", TOPOLOGIES, ids=[t.stem for t in TOPOLOGIES])
def test_every_shipped_experiment_resolves_on_every_topology(topo: Path) -> None:
    topology = load_topology(topo)
    names = {z.name for z in topology.zones}
    planned = plan_run(EXPERIMENTS, topology, CHAOS_PRIMITIVES)
    assert [p.id for p in planned] == [f"{i + 1:02d}-{p.stem}" for i, p in enumerate(EXPERIMENTS)]
    for p in planned:
        assert p.zones and set(p.zones) <= names
        # edge experiments act on edge zones; the Region's (database, AZ node) on AZs
        assert all(topology.zone(z).is_edge != ("region" in p.data.get("tags", [])) for z in p.zones), p.id
        cfg = p.data["configuration"]
        assert all(set(v) <= names if isinstance(v, list) else v in names for v in cfg.values()), cfg  # resolved
        ext = next(e for e in p.data["extensions"] if e["name"] == "edge-harness")
        assert ext["resolved"] == p.roles and set(ext["roles"]) == set(p.roles)
    edge = next(p for p in planned if p.file.stem == "edge-outage")
    assert len(set(edge.zones)) == 3  # three faults, three different zones


def test_roles_resolve_jointly_in_configuration_order() -> None:
    got = resolve_values(["a Local Zone", "another Local Zone", "an edge zone", "every AZ", "a Wavelength Zone"], WIDE)
    assert got == {
        "a Local Zone": "us-west-2-lax-1a",
        "another Local Zone": "us-west-2-lax-1b",
        "an edge zone": "us-west-2-las-1a",
        "every AZ": ["us-west-2a", "us-west-2b"],
        "a Wavelength Zone": "us-west-2-wl1-sfo-wlz-1",
    }
    # a zone named outright is taken: the role picks another one
    assert resolve_values([LAX, "a Local Zone"], DEFAULT)["a Local Zone"] == "us-west-2-las-1a"
    assert resolve_values(["AN  availability ZONE"], DEFAULT) == {"AN  availability ZONE": "us-west-2a"}
    assert resolve_values(["every Local Zone"], DEFAULT)["every Local Zone"] == [LAX, "us-west-2-las-1a",
                                                                                  "us-west-2-phx-2a"]  # fmt: skip


def test_role_errors_name_the_shortage_and_the_typo() -> None:
    with pytest.raises(RoleError, match="has 1 Wavelength Zone and the experiment needs one more"):
        resolve_values(["a Wavelength Zone", "another Wavelength Zone"], DEFAULT)
    with pytest.raises(RoleError, match="has 3 Local Zones and the experiment needs one more"):
        resolve_values(["a Local Zone", "another Local Zone", "a third Local Zone", "a fourth Local Zone"], DEFAULT)
    with pytest.raises(RoleError, match="unknown role 'a Locl Zone'"):
        resolve_zone("a Locl Zone", DEFAULT)
    with pytest.raises(RoleError, match="zone 'us-east-1-bos-1a' is not in the topology"):
        resolve_zone("us-east-1-bos-1a", DEFAULT)
    assert parse_role("a Local Zone, please") is None and parse_role(3) is None


# -- validation before anything starts ---------------------------------------------------------------
def _act(func: str, args: dict[str, Any], module: str = "harness.chaos.actions") -> dict[str, Any]:
    return {"type": "action", "name": f"do {func}", "provider": {"type": "python", "module": module, "func": func,
                                                                  "arguments": args}}  # fmt: skip


def _exp(tmp_path: Path, method: list[dict[str, Any]], cfg: dict[str, Any] | None = None, **extra: Any) -> Path:
    f = tmp_path / "e.json"
    doc = {"title": "t", "description": "d", "configuration": cfg or {}, "method": method, **extra}
    f.write_text(json.dumps(doc))
    return f


@pytest.mark.parametrize(
    ("text", "field"),
    [("{", "line 1"), ("[]", ""), ('{"title": "x", "description": "y"}', "method"),
     ('{"title": "x", "method": []}', "description"), ('{"title": "x", "description": "y", "method": []}', "method"),
     ('{"title":"x","description":"y","method":[{"type":"action","provider":{"type":"python","module":"os",'
      '"func":"system"}}]}', "method[0].provider.module")],
    ids=["syntax", "not-object", "no-method", "no-description", "empty-method", "foreign-module"],
)  # fmt: skip
def test_bad_experiment_is_input_error(tmp_path: Path, text: str, field: str) -> None:
    f = tmp_path / "e.json"
    f.write_text(text)
    with pytest.raises(InputError) as exc:
        check_experiment(f)
    assert str(exc.value).startswith(f"{f}: {field}")


@pytest.mark.parametrize(
    ("method", "cfg", "field", "message"),
    [
        ([_act("kil_pod", {"zone": LAX, "service": "product-api"})], {}, "method[0].provider.func",
         "has no function 'kil_pod'"),
        ([_act("kill_pod", {"zone": LAX, "servce": "product-api"})], {}, "method[0].provider.arguments.servce",
         "kill_pod takes no argument 'servce'"),
        ([_act("kill_pod", {"zone": LAX})], {}, "method[0].provider.arguments", "kill_pod needs argument 'service'"),
        ([_act("kill_pod", {"zone": "${zone}", "service": "product-api"})], {"zone": "a Locl Zone"},
         "configuration.zone", "unknown role 'a Locl Zone'"),
        ([_act("kill_pod", {"zone": "us-west-2-lax-9z", "service": "product-api"})], {},
         "method[0].provider.arguments.zone", "zone 'us-west-2-lax-9z' is not in the topology"),
        ([_act("kill_pod", {"zone": "${zone}", "service": "product-api"})], {}, "method[0].provider.arguments.zone",
         "${zone}: no configuration entry 'zone'"),
        ([_act("kill_pod", {"zone": LAX, "service": "cart-api"})], {}, "method[0].provider.arguments.service",
         "service 'cart-api' is not in the topology"),
        ([_act("kill_pod", {"zone": LAX, "service": "postgres"})], {}, "method[0].provider.arguments.service",
         "postgres runs only in the Region"),
        ([_act("kill_pod", {"zone": "${z}", "service": "product-api"})], {"z": "every Local Zone"},
         "configuration.z", "'every Local Zone' names 3 zones; kill_pod acts on one zone"),
        ([_act("kill_pod", {"zone": "${z}", "service": "product-api"})],
         {"z": "a Wavelength Zone", "y": "another Wavelength Zone"},
         "configuration", "the topology has 1 Wavelength Zone and the experiment needs one more"),
        ([_act("every_shop_answers", {"zones": [LAX, "us-east-1a"]}, "harness.chaos.probes")], {},
         "method[0].provider.arguments.zones", "zone 'us-east-1a' is not in the topology"),
        ([_act("kill_node", {"zone": "${z}"})], {"z": "an AZ without product-api"},
         "configuration", "every AZ of the topology has product-api"),
        ([_act("kill_pod", {"zone": "a Local Zone", "service": "product-api"})], {},
         "method[0].provider.arguments.zone", "roles go in the configuration block"),
        ([_act("kill_pod", {"zone": LAX, "service": "product-api", "configuration": {}})], {},
         "method[0].provider.arguments.configuration", "passed by chaostoolkit"),
        ([_act("kill_pod", {"zone": LAX, "service": "product-api"}) | {"dry": "actions"}], {},
         "method[0].dry", "skipped by chaostoolkit, which still says it succeeded"),
    ],
    ids=["unknown-func", "wrong-arg", "missing-arg", "unknown-role", "unknown-zone", "undefined-var",
         "unknown-service", "region-service-in-lz", "every-for-one", "too-few-zones", "zones-list", "no-free-az",
         "role-outright", "injected-arg", "dry"],
)  # fmt: skip
def test_experiment_refused_before_anything_starts(
    tmp_path: Path, method: list[dict[str, Any]], cfg: dict[str, Any], field: str, message: str
) -> None:
    f = _exp(tmp_path, method, cfg)
    with pytest.raises(InputError) as exc:
        check_experiment(f, DEFAULT, CHAOS_PRIMITIVES)
    assert str(exc.value).startswith(f"{f}: {field}: "), str(exc.value)
    assert message in str(exc.value)


def test_fault_the_backend_cannot_do_is_refused(tmp_path: Path) -> None:
    f = _exp(tmp_path, [_act("kill_pod", {"zone": LAX, "service": "product-api"})],
             rollbacks=[_act("clear_link", {"zone": LAX})])  # fmt: skip
    caps = CHAOS_PRIMITIVES - {"set_link"}
    with pytest.raises(InputError, match=r"rollbacks\[0\].provider.func: clear_link needs set_link, which this"):
        check_experiment(f, DEFAULT, caps)
    check_experiment(f, DEFAULT, CHAOS_PRIMITIVES)
    edge = REPO / "experiments" / "edge-outage.json"
    with pytest.raises(InputError, match=r"method\[2\].provider.func: degrade_link needs set_link"):
        plan_run([edge], DEFAULT, caps)


# -- the journal is judged, not only its status --------------------------------------------------------
def _journal(**kw: Any) -> dict[str, Any]:
    ok_run = {"activity": {"name": "kill it"}, "status": "succeeded"}
    base: dict[str, Any] = {"status": "completed", "deviated": False,
                            "steady_states": {"before": {"steady_state_met": True, "probes": []}, "after": None},
                            "run": [ok_run], "rollbacks": []}  # fmt: skip
    return {**base, **kw}


def test_judge_journal() -> None:
    assert judge_journal(_journal(), ["kill it"]) is None
    assert judge_journal(None, ["kill it"]) == "no journal: chaostoolkit did not run the experiment"
    skipped = _journal(run=[], steady_states={"before": {"steady_state_met": False, "probes": [
        {"activity": {"name": "shop"}, "status": "succeeded", "output": 503, "tolerance_met": False}]}})  # fmt: skip
    assert judge_journal(skipped, ["kill it"]) == (
        "the steady state before the method did not hold (probe 'shop' answered 503, outside its tolerance), "
        "so chaostoolkit skipped the method; action 'kill it' never ran"
    )  # chaostoolkit 1.44 says "completed", deviated false, for exactly this journal
    exc = ["Traceback", "BackendError: no node in zone x\n"]
    failed = _journal(status="failed", run=[{"activity": {"name": "kill it"}, "status": "failed", "exception": exc}])
    assert judge_journal(failed, ["kill it"]) == (
        "journal status 'failed'; action 'kill it' failed: BackendError: no node in zone x"
    )
    missing = judge_journal(_journal(), ["kill it", "and this"])
    assert missing == "action 'and this' never ran"
    rb = _journal(rollbacks=[{"activity": {"name": "heal"}, "status": "failed", "exception": ["E: x"]}])
    assert judge_journal(rb, ["kill it"]) == "rollback 'heal' failed: E: x"
    stray = _journal(run=[{"activity": {"name": "kill it"}, "status": "succeeded"},
                          {"activity": {"name": "probe it"}, "status": "failed", "exception": ["E: y"]}])  # fmt: skip
    assert judge_journal(stray, ["kill it"]) == "activity 'probe it' failed: E: y"
    assert judge_journal(_journal(status="interrupted"), ["kill it"]) == "journal status 'interrupted'"
    dev = _journal(deviated=True, steady_states={"before": None, "after": {"steady_state_met": False, "probes": [
        {"activity": {"name": "ready"}, "status": "failed", "exception": ["boom"]}]}})  # fmt: skip
    assert judge_journal(dev, ["kill it"]) == (
        "the steady state after the method did not hold (deviated): probe 'ready' failed: boom"
    )


# -- run directory: plan.json, one directory per experiment (real chaostoolkit, no backend needed) ------
def _proc_exp(tmp_path: Path, name: str, probe_cmd: str) -> Path:
    doc = {
        "title": name,
        "description": "no backend needed",
        "steady-state-hypothesis": {"title": "ok", "probes": [{"type": "probe", "name": "gate", "tolerance": 0,
                                    "provider": {"type": "process", "path": probe_cmd}}]},
        "method": [{"type": "action", "name": "act", "provider": {"type": "process", "path": "true"}}],
    }  # fmt: skip
    f = tmp_path / f"{name}.json"
    f.write_text(json.dumps(doc))
    return f


@pytest.mark.slow
def test_each_experiment_gets_its_directory_and_the_plan_comes_first(tmp_path: Path) -> None:
    run = tmp_path / "run"
    opts = BackendOptions(name="local", cluster="nothere")
    first = run_experiment(_proc_exp(tmp_path, "alpha", "true"), run, opts)
    assert first.ok and first.id == "01-alpha", first.reason
    second = run_experiment(_proc_exp(tmp_path, "beta", "false"), run, opts)
    # the gate failed: chaostoolkit skipped the method and still wrote "completed"
    journal = json.loads((run / "chaos" / "02-beta" / "journal.json").read_text())
    assert journal["status"] == "completed" and journal["deviated"] is False and journal["run"] == []
    assert not second.ok and second.reason is not None
    assert second.reason.startswith("the steady state before the method did not hold")
    for exp_id in ("01-alpha", "02-beta"):
        d = run / "chaos" / exp_id
        assert {p.name for p in d.iterdir()} >= {"experiment.json", "journal.json", "chaos.log"}
    plan = json.loads((run / "plan.json").read_text())
    assert [(e["id"], e["actions"]) for e in plan["experiments"]] == [("01-alpha", ["act"]), ("02-beta", ["act"])]
    assert not (run / "chaos-journal.json").exists()


@pytest.mark.slow
def test_an_interrupted_experiment_plays_its_rollbacks_even_when_the_caller_ignores_sigint(tmp_path: Path) -> None:
    """A caller that ignores SIGINT (a background job of a script, a cron or CI step) must not hand that on.

    An ignored signal survives exec: chaostoolkit sat out the harness's SIGINT,
    was SIGKILLed 60 s later and never played its rollbacks (the fault stayed).
    Interrupted in its method, it must stop as on Ctrl-C: journal
    "interrupted", rollbacks played.
    """
    started, rolled = tmp_path / "started", tmp_path / "rolled"
    doc = {
        "title": "interrupted", "description": "no backend needed",
        "method": [{"type": "action", "name": "act", "provider": {
            "type": "process", "path": "sh", "arguments": ["-c", f"touch {started}; sleep 120"]}}],
        "rollbacks": [{"type": "action", "name": "undo", "provider": {
            "type": "process", "path": "touch", "arguments": [str(rolled)]}}],
    }  # fmt: skip
    exp = tmp_path / "interrupted.json"
    exp.write_text(json.dumps(doc))

    def ctrl_c(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    def interrupt_once_acting() -> None:
        if wait_until(started.exists, timeout=60):
            os.kill(os.getpid(), signal.SIGUSR1)  # the test's Ctrl-C, delivered to the main thread

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.signal(signal.SIGUSR1, ctrl_c)
    watcher = threading.Thread(target=interrupt_once_acting, daemon=True)
    watcher.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_experiment(exp, tmp_path / "run", BackendOptions(name="local", cluster="nothere"))
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGUSR1, previous[1])
    watcher.join()
    journal = json.loads((tmp_path / "run" / "chaos" / "01-interrupted" / "journal.json").read_text())
    assert journal["status"] == "interrupted"
    assert rolled.exists()


# -- actions: timeline order, restore timing, snapshots, one backend per process --------------------------
class FakeBackend:
    """The protocol as the actions use it: pods that die and come back, primitives that note when they ran."""

    name = "fake"

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.inv = Inventory()
        self.n = 0
        self.calls: list[tuple[str, Any, int]] = []  # (primitive, args, timeline lines written when called)
        self.pending: list[tuple[float, str]] = []  # (due, service) replacements
        self.unready = False
        self.healed_at = 0.0
        self.closed = 0
        self._add("product-api")
        self._add("frontend")

    class _M:
        topology = DEFAULT

    def manifests(self) -> Any:
        return self._M()

    def _add(self, service: str, ready_delay: float = 0.0) -> None:
        self.n += 1
        pod = f"{service}-{self.n}"
        self.inv.added(PodInfo(pod, f"10.0.0.{self.n}", "lax-1a-n1", LAX, service, f"{service}-lax-1a", "ns",
                               time.time()))  # fmt: skip
        self.inv.ready(pod, time.time() + ready_delay)

    def _note(self, what: str, args: Any) -> None:
        tl = self.run_dir / "chaos.jsonl"
        self.calls.append((what, args, len(tl.read_text().splitlines()) if tl.exists() else 0))

    def _tick(self) -> None:
        now = time.time()
        for due, svc in [x for x in self.pending if x[0] <= now]:
            self.pending.remove((due, svc))
            self._add(svc, ready_delay=0.05)  # the replacement becomes ready a little after it exists

    def require_capability(self, primitive: str, zone: str | None = None) -> None:
        """Every fault is possible on this fake (the actions ask before they record an inject)."""

    def status(self) -> Status:
        self._tick()
        phase = "NotReady" if self.unready else "Ready"
        return Status("fake", True, "", {p.pod: phase for p in self.inv.pods(alive_only=True)})

    def inventory(self) -> Inventory:
        self._tick()
        return self.inv

    def nodes(self) -> dict[str, str]:
        return {"lax-1a-n1": LAX}

    def control_plane_nodes(self) -> dict[str, list[str]]:
        return {}  # a Local Zone's node: the mesh's control plane runs in the Region

    def entrypoints(self) -> dict[str, str]:
        return {LAX: "http://127.0.0.1:9"}

    def envoy_admin_many(self, pods: Sequence[str], path: str, timeout_s: float = 5.0) -> AdminAnswers:
        return each_admin(self.envoy_admin, pods, path, timeout_s)  # as Backend's default does

    def envoy_admin(self, pod: str, path: str, timeout_s: float = 5.0) -> bytes:
        assert path == "/clusters?format=json"
        host = {"address": {"socket_address": {"address": "10.0.0.9", "port_value": 20000}},
                "stats": [{"name": "cx_total", "value": "2"}, {"name": "rq_total"}],
                "health_status": {"eds_health_status": "HEALTHY"}}  # fmt: skip
        return json.dumps({"cluster_statuses": [{"name": "product-api-lax-1a.x", "host_statuses": [host]}]}).encode()

    def kill_pod(self, zone: str, service: str) -> list[str]:
        self._note("kill_pod", (zone, service))
        victims = [p.pod for p in self.inv.pods(alive_only=True) if p.service == service]
        for v in victims:
            self.inv.removed(v)
        self.pending.append((time.time() + 0.3, service))
        return victims

    def set_pod_unready(self, zone: str, service: str) -> list[str]:
        self._note("set_pod_unready", (zone, service))
        self.unready = True
        return ["product-api-1"]

    def set_pod_ready(self, zone: str, service: str) -> list[str]:
        self._note("set_pod_ready", (zone, service))
        self.unready = False
        return ["product-api-1"]

    def kill_node(self, node: str) -> None:
        self._note("kill_node", node)
        for p in self.inv.pods(alive_only=True):
            self.inv.removed(p.pod)

    def restore_node(self, node: str) -> None:
        self._note("restore_node", node)
        self._add("product-api")
        self._add("frontend")

    def set_link(self, zone: str, latency_ms: float, loss_percent: float = 0.0) -> None:
        self._note("set_link", zone)

    def clear_link(self, zone: str) -> None:
        self._note("clear_link", zone)

    def partition_zone(self, zone: str) -> None:
        self._note("partition_zone", zone)
        self.unready = True

    def heal_zone(self, zone: str) -> None:
        self._note("heal_zone", zone)
        self.healed_at = time.time()
        threading.Timer(0.4, lambda: setattr(self, "unready", False)).start()  # readiness comes back a little later

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeBackend:
    b = FakeBackend(tmp_path)
    monkeypatch.setattr(actions, "_backend", lambda configuration=None: b)
    monkeypatch.setenv("EH_RUN_DIR", str(tmp_path))
    return b


def _timeline(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (tmp_path / "chaos.jsonl").read_text().splitlines()]


def _labels(tmp_path: Path) -> list[str]:
    rows = [json.loads(x) for x in (tmp_path / "upstream-stats.jsonl").read_text().splitlines()]
    return list(dict.fromkeys(r["label"] for r in rows))


@pytest.mark.parametrize(
    "kind,services,down",
    [
        (FaultKind.SERVICE_DOWN, ["product-api"], False),
        (FaultKind.SERVICE_DOWN, ["frontend"], True),  # kill_pod / make_unready of the entry service
        (FaultKind.SERVICE_DOWN, ["frontend", "product-api"], True),  # kill_node with the frontend on it
        (FaultKind.ZONE_DOWN, [], True),
        (FaultKind.PARTITION, [], True),
        (FaultKind.LINK_DEGRADED, [], False),
    ],
)
def test_a_fault_takes_the_zones_entry_down_by_one_rule(
    kind: FaultKind, services: list[str], down: bool, tmp_path: Path
) -> None:
    """Every action's inject line and the fake's follow `takes_entry_down`; a restore line's is false."""
    assert takes_entry_down(kind, services) is down
    path = tmp_path / "chaos.jsonl"
    assert record("f", "inject", "a", LAX, kind, services, path=path)["entry_down"] is down
    assert record("f", "restore", "a", LAX, kind, services, path=path)["entry_down"] is False


def test_kill_pod_restores_at_the_replacements_ready_event(fake: FakeBackend, tmp_path: Path) -> None:
    out = actions.kill_pod("a Local Zone", "product-api", configuration={"zone": "a Local Zone"})
    inject, restore = _timeline(tmp_path)
    assert (inject["phase"], restore["phase"]) == ("inject", "restore")
    assert inject["fault"] == restore["fault"] == out["fault"] and out["zone"] == LAX
    assert inject["kind"] == "service-down" and inject["services"] == ["product-api"] and not inject["entry_down"]
    replacement = next(p.pod for p in fake.inv.pods(alive_only=True) if p.service == "product-api")
    assert restore["ts"] == fake.inv.ready_since(replacement)  # not when the action noticed
    # the restore is the replacement's readiness, not its creation (which came after the inject)
    assert inject["ts"] < fake.inv.get(replacement).started < restore["ts"]  # type: ignore[union-attr]
    assert [c[:2] for c in fake.calls] == [("kill_pod", (LAX, "product-api"))]
    assert fake.calls[0][2] == 1  # the inject was on disk before the primitive acted
    f = inject["fault"]
    assert _labels(tmp_path) == [f"before {f}", f"inject {f}", f"restore {f}"]


def test_kill_pod_without_ready_event_is_an_error_not_a_guess(
    fake: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(actions, "NO_READY_EVENT_GRACE_S", 0.2)
    monkeypatch.setattr(fake.inv, "ready", lambda pod, ts=None: None)  # a backend that never writes `ready`
    with pytest.raises(BackendError, match="no `ready` event"):
        actions.kill_pod(LAX, "product-api")


@pytest.mark.parametrize(
    ("call", "undo"),
    [
        (lambda: actions.make_unready(LAX, "product-api", duration_s=0.1), "set_pod_ready"),
        (lambda: actions.kill_node(LAX, duration_s=0.1), "restore_node"),
        (lambda: actions.degrade_link(LAX, 50, duration_s=0.1), "clear_link"),
        (lambda: actions.partition_zone(LAX, duration_s=0.1), "heal_zone"),
    ],
    ids=["unready", "node", "link", "partition"],
)
def test_restore_is_written_before_the_undoing_primitive(
    fake: FakeBackend, tmp_path: Path, call: Any, undo: str
) -> None:
    call()
    inject, restore = _timeline(tmp_path)
    assert (inject["phase"], restore["phase"]) == ("inject", "restore")
    acted, undone = fake.calls[0], fake.calls[-1]
    assert acted[2] == 1  # inject on disk before the fault
    assert undone[0] == undo and undone[2] == 2  # restore on disk before the undo was called
    assert _labels(tmp_path)[-1] == f"restore {inject['fault']}"


def test_kill_node_names_services_lost_and_snapshots_before_pods_die(fake: FakeBackend, tmp_path: Path) -> None:
    out = actions.kill_node(LAX, duration_s=0.1)
    inject, _ = _timeline(tmp_path)
    assert inject["services"] == ["frontend", "product-api"] and inject["entry_down"] is True
    assert out["node"] == "lax-1a-n1" and [c[0] for c in fake.calls] == ["kill_node", "restore_node"]
    assert _labels(tmp_path)[0] == f"before {inject['fault']}"


def test_kill_node_unknown_zone_is_refused(fake: FakeBackend) -> None:
    with pytest.raises(BackendError, match="not in the topology"):
        actions.kill_node("us-west-2-nowhere-1a", duration_s=0)
    with pytest.raises(BackendError, match="unknown role"):
        actions.kill_node("a Locl Zone", duration_s=0)


def test_wait_ready_times_out_with_the_missing_services(fake: FakeBackend) -> None:
    with pytest.raises(BackendError, match="public-api not ready"):
        actions.wait_ready(fake, LAX, ["public-api"], timeout_s=0.3)  # type: ignore[arg-type]


def test_partition_returns_once_the_zone_is_whole(fake: FakeBackend, tmp_path: Path) -> None:
    t0 = time.time()
    out = actions.partition_zone(LAX, duration_s=0.1)
    inject, restore = _timeline(tmp_path)
    assert (inject["kind"], inject["entry_down"]) == ("partition", True)
    assert restore["ts"] <= fake.healed_at  # recorded at the heal, not after the wait for the zone's readiness
    assert time.time() - t0 >= 0.45 and out["whole_after_heal_s"] >= 0.3
    assert [c[0] for c in fake.calls] == ["partition_zone", "heal_zone"]


def test_probes_take_roles(fake: FakeBackend) -> None:
    assert probes.all_pods_ready(zones="every Local Zone") is True
    assert probes.zone_has_ready("a Local Zone", "product-api") is True
    assert probes._zones(["a Local Zone", "us-west-2a"], {"zone": "a Local Zone"}) == [LAX, "us-west-2a"]
    with pytest.raises(BackendError, match="unknown role"):
        probes._zones("an Availability Zne", None)


def test_all_pods_ready_waits_for_readiness_within_the_slos_recovery(
    fake: FakeBackend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """After a fault, steady means Ready again within maxRecoveryS, not Ready at the instant the probe looked:
    sampled once 4 s after a node came back it said False on a saturated machine (one run in ten of a correct
    mesh failed). Counted in looks on a fake clock, not in seconds: same answer however the CPU is shared."""
    looks: list[int] = []
    clock = iter(range(0, 10_000, 10))  # each reading of the clock 10 s after the last
    monkeypatch.setattr(actions, "_now", lambda: float(next(clock)))
    monkeypatch.setattr(probes, "POLL_S", 0.0)

    def pods(ready_at_look: int) -> Callable[[], Status]:
        def status() -> Status:
            looks.append(1)
            phase = "Ready" if len(looks) >= ready_at_look else "NotReady"
            return Status("fake", True, "", {"frontend-2": phase, "product-api-1": "Ready"})

        return status

    monkeypatch.setattr(fake, "status", pods(ready_at_look=3))
    with caplog.at_level(logging.INFO, logger="chaostoolkit"):
        assert probes.all_pods_ready() is True and len(looks) == 3  # Ready at the third look, 30 s on
    assert "every pod Ready after 30.0 s" in caplog.text
    caplog.clear()
    looks.clear()
    monkeypatch.setattr(fake, "status", pods(ready_at_look=1))
    assert probes.all_pods_ready(within_s=0) is True and len(looks) == 1  # already Ready: the first look answers

    looks.clear()
    monkeypatch.setattr(fake, "status", pods(ready_at_look=10**6))  # never Ready
    with caplog.at_level(logging.INFO, logger="chaostoolkit"):
        assert probes.all_pods_ready() is False
    # the default bound is the topology's maxRecoveryS (60 s): a look at most every 10 s of it, then False
    assert DEFAULT.slo.max_recovery_s == 60 and 3 <= len(looks) <= 7, len(looks)
    assert "not Ready: frontend-2 after 60 s" in caplog.text
    looks.clear()
    assert probes.all_pods_ready(within_s=0) is False and len(looks) == 1

    looks.clear()
    monkeypatch.setattr(fake, "status", lambda: looks.append(1) or Status("fake", False, "", {}))
    assert probes.all_pods_ready() is False and len(looks) == 1  # not up: nothing to wait for
    assert probes.all_pods_ready(zones="every Local Zone") is False and len(looks) == 2  # zones or not


def test_one_backend_per_process_closed_at_the_end(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    made: list[FakeBackend] = []

    def connect(opts: BackendOptions) -> FakeBackend:
        made.append(FakeBackend(tmp_path))
        return made[-1]

    monkeypatch.setattr(actions, "connect", connect)
    monkeypatch.setattr(actions, "_backends", {})
    monkeypatch.setenv("EH_BACKEND", "local")
    a = actions._backend({"eh_cluster": "one"})
    assert actions._backend({"eh_cluster": "one"}) is a and probes.actions._backend({"eh_cluster": "one"}) is a
    b = actions._backend({"eh_cluster": "two"})
    assert b is not a and len(made) == 2
    from harness.chaos.control import after_experiment_control

    after_experiment_control(context={}, state={})
    assert [m.closed for m in made] == [1, 1]
    assert actions._backend({"eh_cluster": "one"}) is not a  # a new one after close
    actions.close_backends()


def test_the_topology_is_read_once_per_backend_and_again_after_close(monkeypatch: pytest.MonkeyPatch) -> None:
    """Actions and probes resolve zones with the cluster's topology: read once per backend in a chaos process,
    not once per step; a read that failed is not kept, and a closed backend's is forgotten."""
    reads: list[int] = []

    class Counting:
        def __init__(self, fail: bool = False) -> None:
            self.fail = fail

        def manifests(self) -> Any:
            reads.append(id(self))
            if self.fail:
                raise BackendError("never brought up")
            return types.SimpleNamespace(topology=DEFAULT)

    monkeypatch.setattr(actions, "_topologies", {})
    a, b = Counting(), Counting()
    assert actions.topology_of(a) is DEFAULT and actions.topology_of(a) is DEFAULT and len(reads) == 1  # type: ignore[arg-type]
    assert actions.topology_of(b) is DEFAULT and len(reads) == 2  # type: ignore[arg-type]
    broken = Counting(fail=True)
    for _ in range(2):
        with pytest.raises(BackendError):
            actions.topology_of(broken)  # type: ignore[arg-type]
    assert len(reads) == 4  # asked again: a failure is not kept
    actions.close_backends()
    actions.topology_of(a)  # type: ignore[arg-type]
    assert len(reads) == 5


def test_a_replacement_is_restored_at_its_first_ready_even_if_it_flapped_since() -> None:
    """The restore is the replacement's first `ready` event, whenever the action looks: a burst looked at a zone
    when its turn came round, found the replacement unready again (its readiness flapped) and recorded the
    restore at its next `ready`, seconds late, by when it happened to look."""
    inv = Inventory()

    def pod(name: str, ts: float) -> PodInfo:
        return PodInfo(name, "10.0.0.9", "n1", "lax", "product-api", "product-api-lax", "default", ts)

    inv.added(pod("old", 1.0))
    inv.ready("old", 1.5)
    inv.removed("old", 10.0)
    inv.added(pod("new", 10.5))
    inv.ready("new", 11.0)
    inv.unready("new", 12.0)  # unready when the action looks

    class Backend:
        def inventory(self) -> Inventory:
            return inv

        def status(self) -> Status:
            return Status("stub", True, pods={"new": "NotReady"})

    assert actions.wait_replacement_ready(Backend(), "lax", "product-api", {"old"}, timeout_s=0.3) == 11.0  # type: ignore[arg-type]
    inv.ready("new", 13.0)
    assert actions.wait_replacement_ready(Backend(), "lax", "product-api", {"old"}, timeout_s=0.3) == 11.0  # type: ignore[arg-type]


# -- the shop probe: a user's timeouts, and why it got no answer ----------------------------------------------
def test_the_shop_probe_gives_up_when_a_user_would() -> None:
    """The probe's and the entry monitor's "no answer" is a user's: the bounds of loadtests/hashicups.py.

    At 5 s the probe called an answer "none" that a user (10 s) counted as
    served, and that the mesh's worst case (three 2 s connects) can take.
    """
    tree = ast.parse((REPO / "loadtests" / "hashicups.py").read_text())
    users = {
        t.id: ast.literal_eval(n.value)
        for n in tree.body
        if isinstance(n, ast.Assign)
        for t in n.targets
        if isinstance(t, ast.Name) and t.id in ("CONNECT_TIMEOUT_S", "NETWORK_TIMEOUT_S", "PROBE_ENDPOINT")
    }
    assert users == {"CONNECT_TIMEOUT_S": CONNECT_TIMEOUT_S, "NETWORK_TIMEOUT_S": ANSWER_TIMEOUT_S,
                     "PROBE_ENDPOINT": PROBE_ENDPOINT}  # the verdict tells the probes by it (availability)  # fmt: skip
    for timeout in (probes.SHOP_TIMEOUT, ENTRY_PROBE_TIMEOUT):  # the shop probe, the kind/EKS entry monitor
        assert (timeout.connect, timeout.read) == (3.0, 10.0)


def test_the_shop_probe_says_why_it_got_no_answer(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with caplog.at_level("WARNING", logger="chaostoolkit"), httpx.Client(timeout=probes.SHOP_TIMEOUT) as client:
        assert probes._shop_status(f"http://127.0.0.1:{port}", client) == 0
    assert any("no answer from" in r.message and "ConnectError" in r.message for r in caplog.records), caplog.text


@contextlib.contextmanager
def _shops(n: int, code_of: Callable[[int], int]) -> Iterator[list[int]]:
    """`n` local shops on their own ports; each POST answers `code_of(port)` with a coffees body."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Shop(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            code = code_of(self.server.server_address[1])
            body = b'{"data": {"coffees": []}}'
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    servers = [ThreadingHTTPServer(("127.0.0.1", 0), Shop) for _ in range(n)]
    for srv in servers:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield [srv.server_address[1] for srv in servers]
    finally:
        for srv in servers:
            srv.shutdown()
            srv.server_close()


def _shop_backend(monkeypatch: pytest.MonkeyPatch, zones: Sequence[str], ports: list[int]) -> None:
    class Backend:
        def entrypoints(self) -> dict[str, str]:
            return {z: f"http://127.0.0.1:{port}" for z, port in zip(zones, ports, strict=True)}

    monkeypatch.setattr(actions, "_backend", lambda configuration=None: Backend())


def test_every_shop_is_asked_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The steady-state probe asks every zone at once: asked in turn, six zones' user latencies added up to half a
    second per look, before and after every experiment. Each shop here answers only once every zone's question is
    in (a barrier), so asking in turn can only fail; one shop that says 503 still fails the probe."""
    zones = ["lax", "las", "phx", "den"]
    barrier = threading.Barrier(len(zones), timeout=5.0)
    failing: set[int] = set()

    def code_of(port: int) -> int:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return 500
        return 503 if port in failing else 200

    with _shops(len(zones), code_of) as ports:
        _shop_backend(monkeypatch, zones, ports)
        assert probes.every_shop_answers(within_s=0) is True
        failing.add(ports[2])
        assert probes.every_shop_answers(within_s=0) is False  # one look (the wait: the test below)


def test_every_shop_answers_waits_for_the_shops_within_the_slos_recovery(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """After a fault, "the shop answers" means again within maxRecoveryS: asked once 3 s after a replaced postgres,
    the Region's shop failed on a correct mesh (its public-apis' 5 s outlier ejection of the product-apis had not
    run out). A zone that answered is not asked again; one that never does is named. On a fake clock: counted in
    looks, not seconds."""
    asked: dict[int, int] = {}
    fails_first: dict[int, int] = {}

    def code_of(port: int) -> int:
        asked[port] = asked.get(port, 0) + 1
        return 503 if asked[port] <= fails_first.get(port, 0) else 200

    clock = iter(range(0, 10_000, 10))  # each reading of the clock 10 s after the last
    monkeypatch.setattr(actions, "_now", lambda: float(next(clock)))
    monkeypatch.setattr(probes, "POLL_S", 0.0)
    monkeypatch.setattr(actions, "topology_of", lambda _b: DEFAULT)
    with _shops(3, code_of) as ports:
        _shop_backend(monkeypatch, ["z0", "z1", "z2"], ports)
        fails_first[ports[1]] = 2  # z1 answers at its third ask
        with caplog.at_level(logging.INFO, logger="chaostoolkit"):
            assert probes.every_shop_answers() is True
        assert [asked[p] for p in ports] == [1, 3, 1]  # the others answered at the first look: not asked again
        assert "every shop answered after" in caplog.text
        asked.clear()
        caplog.clear()
        fails_first[ports[2]] = 10**6  # z2 never answers 200
        with caplog.at_level(logging.INFO, logger="chaostoolkit"):
            assert probes.every_shop_answers() is False
        assert DEFAULT.slo.max_recovery_s == 60 and 3 <= asked[ports[2]] <= 7, asked  # a look every 10 s of 60
        assert "not 200 in z2 (503) after 60 s" in caplog.text


def test_every_harness_action_is_classed_as_making_or_undoing_a_fault() -> None:
    """`experiment-ran` asks a fault action's output for the fault it recorded (harness.contract.journal): an
    action added to PRIMITIVE_OF must be put in FAULT_ACTIONS or named here as one that undoes a fault."""
    from harness.chaos.actions import PRIMITIVE_OF
    from harness.contract.journal import FAULT_ACTIONS

    undo = {"make_ready", "restore_node", "restore_zone", "clear_link", "heal_zone"}
    assert FAULT_ACTIONS | undo == set(PRIMITIVE_OF) and not FAULT_ACTIONS & undo

"""Game-day rails of the existing backend, against the simulated EKS-like cluster (issue 10, deliverable 4).

Each rail has its test: the allow-list (flag, environment variable, file),
dry run by default for destructive faults (the plan names nodes, pods, and
how long), the blast radius (a share of a zone at once; never the last Region
replica of a Region-only service), the steady state before the first
injection, and the kill switch (a file, or `harness chaos --abort RUN_DIR`)
that rolls back at once, also what a crashed chaos process left. Every
refusal is asserted to have changed nothing on the cluster (the fake API
server's request log).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from harness.backends.existing import ExistingBackend
from harness.backends.fence import AllowList, load_allow_file
from harness.backends.kube import KubeCluster
from harness.errors import BackendError, InputError
from tests.conftest import wait_until
from tests.kubefake import FakeApiServer, fake_tools, rendered
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.kubefake import nothing_refused as nothing_refused
from tests.test_backend_existing import EKS_NODES, ENTRY, LAS, LAX, PHX, _cluster

REPO = Path(__file__).resolve().parents[1]
CTX = "eks-nightly"
AZ_A = "us-west-2a"
NODE = {n["metadata"]["labels"]["topology.kubernetes.io/zone"]: n["metadata"]["name"] for n in EKS_NODES}
PHX1, PHX2 = EKS_NODES[4]["metadata"]["name"], EKS_NODES[5]["metadata"]["name"]
pytestmark = pytest.mark.usefixtures("nothing_refused")  # `_cluster` puts the context under the shipped role
ENV_KEYS = ("EH_ENTRYPOINTS", "EH_ALLOW_CONTEXTS", "EH_ALLOW_FILE", "EH_EXECUTE", "EH_MAX_SHARE", "EH_KILL_SWITCH",
            "EH_RUN_DIR", "EH_BACKEND", "EH_CONTEXT")  # fmt: skip


@pytest.fixture
def eks(api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[KubeCluster]:
    """EKS-like nodes with the operator's Consul; cwd is tmp_path (runs/ lands there); no EH_* from outside."""
    for k in ENV_KEYS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))  # never the developer's own allow-list file
    monkeypatch.chdir(tmp_path)
    fake_tools(api, tmp_path, monkeypatch)  # the fake kubectl: `up` reaches Consul's API through a port-forward
    yield _cluster(api, tmp_path)


def _backend(api: FakeApiServer, tmp_path: Path, allow: tuple[str, ...] = (CTX,), **kw: Any) -> ExistingBackend:
    """Workdir runs/.backend under the test's cwd, as the CLI and the chaos processes find it."""
    kc = api.write_kubeconfig(tmp_path / "kubeconfig", CTX)
    b = ExistingBackend(CTX, kc, allow, workdir=tmp_path / "runs" / ".backend",
                        entrypoints=[f"{z}={u}" for z, u in ENTRY.items()], **kw)  # fmt: skip
    b.ready_poll_s = 0.1
    return b


def _up(api: FakeApiServer, tmp_path: Path, **kw: Any) -> ExistingBackend:
    b = _backend(api, tmp_path, **kw)
    b.up(rendered(tmp_path))
    return b


def _writes(api: FakeApiServer) -> list[tuple[str, str]]:
    return [(m, p) for m, p, _d in api.writes()]


def _other_team(zone: str) -> dict[str, Any]:
    """Another team's Deployment pinned to `zone`: what a node kill on a shared cluster also hits."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "cache", "namespace": "team-x"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "cache"}},
            "template": {
                "metadata": {"labels": {"app": "cache"}},
                "spec": {
                    "nodeSelector": {"topology.kubernetes.io/zone": zone},
                    "containers": [{"name": "cache", "image": "redis:7"}],
                },
            },
        },
    }


def _postgres(c: KubeCluster) -> dict[str, Any]:
    (pg,) = c.pods("hashicups", {"app": "postgres"})
    return pg


def _cli(*args: str) -> list[str]:
    return ["--backend", "existing", "--context", CTX, "--kubeconfig", "kubeconfig", *args]


# -- allow-list -----------------------------------------------------------------------------------------------


def test_allow_list_from_flag_env_and_file(
    api: FakeApiServer, eks: KubeCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not _backend(api, tmp_path, ()).destructive_allowed
    f = tmp_path / "allowed"
    f.write_text("# contexts the game-day team may break\nstaging\neks-nightly  max-share=0.5  # half a zone at most\n")
    b = _backend(api, tmp_path, (), allow_file=f)
    assert b.destructive_allowed and b.blast.max_share == 0.5
    assert b.allow.sources(CTX) == [f"{f}:line 3"]
    monkeypatch.setenv("EH_ALLOW_FILE", str(f))  # the file by environment variable
    assert _backend(api, tmp_path, ()).destructive_allowed
    monkeypatch.delenv("EH_ALLOW_FILE")
    default = tmp_path / "xdg" / "edge-harness" / "allowed-contexts"  # the default path
    default.parent.mkdir(parents=True)
    default.write_text("eks-nightly\n")
    assert _backend(api, tmp_path, ()).destructive_allowed
    default.unlink()
    monkeypatch.setenv("EH_ALLOW_CONTEXTS", "other, eks-nightly")
    assert _backend(api, tmp_path, ()).allow.sources(CTX) == ["EH_ALLOW_CONTEXTS"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("eks-nightly max-share=2\n", r"^{f}: line 1: expected a share between 0 and 1 \(e\.g\. 0\.5\), got '2'$"),
        ("ok\n\nbad context\n", r"^{f}: line 3: unknown option 'context' \(only max-share=S\)$"),
        ("a\na\n", r"^{f}: line 2: context 'a' is listed twice$"),
        ("pröd\n", r"^{f}: line 1: not a kubeconfig context name: 'pröd'$"),
    ],
)
def test_a_bad_allow_file_is_one_line_naming_the_line(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "allowed"
    f.write_text(text)
    with pytest.raises(InputError, match=message.replace("{f}", str(f))):
        load_allow_file(f)


def test_a_missing_allow_file_is_an_input_error_exit_2_nothing_changed(
    api: FakeApiServer, eks: KubeCluster, tmp_path: Path, capsys: Any
) -> None:
    from harness.cli import main

    api.write_kubeconfig(tmp_path / "kubeconfig", CTX)
    before = _writes(api)
    rc = main(["chaos", *_cli("--allow-file", "nope"), str(REPO / "experiments" / "node-kill.json")])
    assert rc == 2
    assert capsys.readouterr().err.strip() == "nope: no such allow-list file"
    assert _writes(api) == before and not (tmp_path / "runs").exists()
    with pytest.raises(InputError, match=r"^nope: no such allow-list file$"):
        AllowList.gather(file="nope")


def test_destructive_faults_refused_off_the_allow_list(api: FakeApiServer, eks: KubeCluster, tmp_path: Path) -> None:
    b = _up(api, tmp_path, allow=(), execute=True)
    before = _writes(api)
    with pytest.raises(BackendError, match=r"^refusing kill_node .* needs the context on the allow-list"):
        b.kill_node(NODE[LAX])
    assert _writes(api) == before
    b.close()


# -- dry run --------------------------------------------------------------------------------------------------


def test_destructive_faults_are_a_dry_run_unless_executed(api: FakeApiServer, eks: KubeCluster, tmp_path: Path) -> None:
    api.seed(eks, _other_team(LAX))
    b = _up(api, tmp_path)
    assert wait_until(lambda: bool(eks.pods("team-x")) and eks.pods("team-x")[0]["spec"].get("nodeName"), 60)
    (cache,) = eks.pods("team-x")
    before = _writes(api)
    with pytest.raises(BackendError) as exc:
        b.kill_node(NODE[LAX])
    msg = str(exc.value)
    assert msg.startswith(f"dry run: kill_node in {LAX} would cordon {NODE[LAX]}; delete 3 pod(s) of the run: ")
    assert f"delete 1 pod(s) of other workloads: team-x/{cache['metadata']['name']}" in msg
    assert msg.endswith("nothing injected (rerun with --execute or EH_EXECUTE=1 to inject it)")
    assert _writes(api) == before
    assert b.ledger.entries() == []
    b.close()


def test_chaos_cli_prints_the_plan_and_injects_nothing_without_execute(
    api: FakeApiServer, eks: KubeCluster, tmp_path: Path, capsys: Any
) -> None:
    from harness.cli import main

    api.seed(eks, _other_team(LAX))
    b = _up(api, tmp_path)
    b.close()
    capsys.readouterr()
    before = _writes(api)
    exp = REPO / "experiments" / "node-kill.json"
    assert main(["chaos", *_cli("--allow-context", CTX), str(exp)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0] == f"plan: {exp} ('A Local Zone node dies and comes back') on context {CTX}"
    assert lines[1].startswith("  destructive chaos: allowed (--allow-context); blast radius: at most 100%")
    assert lines[2] == "  steady state: holds"
    assert lines[3] == f"  1. kill a node of a Local Zone: kill_node in {LAX} for 8 s, then a 4 s pause [destructive]"
    assert lines[4].startswith(f"     cordon {NODE[LAX]}; delete 3 pod(s) of the run: hashicups-lax-1a/")
    assert "pod(s) of other workloads: team-x/cache-" in lines[4]
    assert lines[5] == "  rollbacks (always): restore the Local Zone's nodes (restore_node)"
    assert lines[6].startswith(f"DRY RUN: {exp} has destructive actions and --execute was not given: nothing was")
    assert _writes(api) == before and not [d for d in (tmp_path / "runs").iterdir() if d.name != ".backend"]


def _e2e_dry_run(api: FakeApiServer, tmp_path: Path, capsys: Any, *args: str) -> list[str]:
    """`harness e2e` against the EKS-like cluster that must stop at its plan: exit 0, nothing written or created."""
    from harness.cli import main

    api.write_kubeconfig(tmp_path / "kubeconfig", CTX)
    before = _writes(api)
    entry = [f"--entrypoint={z}={u}" for z, u in ENTRY.items()]
    assert main(["e2e", *_cli("--allow-context", CTX), *entry, *args]) == 0
    assert _writes(api) == before  # nothing brought up, nothing injected
    assert not (tmp_path / "runs").exists() or not [d for d in (tmp_path / "runs").iterdir() if d.name != ".backend"]
    return list(capsys.readouterr().out.splitlines())


def test_e2e_against_an_existing_cluster_is_a_dry_run_unless_executed(
    api: FakeApiServer, eks: KubeCluster, tmp_path: Path, capsys: Any
) -> None:
    out = "\n".join(_e2e_dry_run(api, tmp_path, capsys, "--experiment", str(REPO / "experiments" / "node-kill.json")))
    assert "steady state: checked before the first injection (the run is not up yet)" in out
    assert f"cordon {NODE[LAX]}" in out and "DRY RUN" in out


POD_KILL = REPO / "experiments" / "kill-product-api-lax.json"  # no destructive primitive: runs without --execute


def test_e2e_dry_run_plans_even_a_pod_kill_and_brings_up_nothing(
    api: FakeApiServer, eks: KubeCluster, tmp_path: Path, capsys: Any
) -> None:
    """A game day's first look (gameday.yml's default): without `--dry-run` this e2e would run, pod kill and all."""
    from harness.e2e import E2EOptions
    from harness.gameday import dry_run_e2e

    lines = _e2e_dry_run(api, tmp_path, capsys, "--dry-run", "--experiment", str(POD_KILL))
    assert any(f"kill_pod in {LAX}" in line for line in lines)
    assert lines[-1] == f"DRY RUN: {POD_KILL} --dry-run was given: nothing was injected, nothing was created " \
        "(rerun with --execute to run it)"  # fmt: skip
    # with no experiment at all (traffic only) --dry-run still brings nothing up
    lines = _e2e_dry_run(api, tmp_path, capsys, "--dry-run")
    assert lines[-1] == "DRY RUN: no experiment planned: nothing was injected, nothing was created"
    # the same run without --dry-run is not stopped: a pod kill is not destructive to the cluster's owner
    planned = [SimpleNamespace(file=str(POD_KILL), data=json.loads(POD_KILL.read_text()))]
    assert dry_run_e2e(planned, E2EOptions(), SimpleNamespace(execute=False), lambda p: p) is None


def test_chaos_dry_run_plans_a_pod_kill_and_injects_nothing(
    api: FakeApiServer, eks: KubeCluster, tmp_path: Path, capsys: Any
) -> None:
    from harness.cli import main

    _up(api, tmp_path).close()
    capsys.readouterr()
    before = _writes(api)
    assert main(["chaos", *_cli("--allow-context", CTX), "--dry-run", str(POD_KILL)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"plan: {POD_KILL} ")
    assert lines[-1].startswith(f"DRY RUN: {POD_KILL} --dry-run was given: nothing was injected")
    assert _writes(api) == before and not [d for d in (tmp_path / "runs").iterdir() if d.name != ".backend"]


CONTRADICTS = "--dry-run: not with --execute (or EH_EXECUTE=1): a dry run injects nothing"
NOT_OURS = "--dry-run: --backend existing only (a plan is of a cluster that is not ours)"


@pytest.mark.parametrize(
    ("cmd", "extra", "line"),
    [
        ("e2e", ["--execute"], CONTRADICTS),
        ("chaos", ["--execute"], CONTRADICTS),
        ("e2e", ["--backend", "local"], NOT_OURS),
        ("chaos", ["--backend", "kind"], NOT_OURS),
    ],
)
def test_a_dry_run_that_cannot_be_is_one_line_exit_2_nothing_touched(
    api: FakeApiServer, eks: KubeCluster, tmp_path: Path, capsys: Any, cmd: str, extra: list[str], line: str
) -> None:
    from harness.cli import main

    api.write_kubeconfig(tmp_path / "kubeconfig", CTX)
    before = _writes(api)
    exp = ["--experiment", str(POD_KILL)] if cmd == "e2e" else [str(POD_KILL)]
    assert main([cmd, *_cli("--allow-context", CTX), *extra, "--dry-run", *exp]) == 2
    assert capsys.readouterr().err.strip() == line
    assert _writes(api) == before and not (tmp_path / "runs").exists()


# -- blast radius ------------------------------------------------------------------------------------------------


def test_blast_radius_share_of_a_zone_at_once(api: FakeApiServer, eks: KubeCluster, tmp_path: Path) -> None:
    b = _up(api, tmp_path, execute=True, max_share=0.5)  # phx-2a: 2 nodes, 3 pods of the run
    before = _writes(api)
    with pytest.raises(BackendError, match=rf"zone {PHX}: 2 of 2 nodes down at once \(100%\), the limit is 50%"):
        b.zone_outage(PHX)
    assert _writes(api) == before
    on = {n: [p for p in eks.pods("hashicups-phx-2a") if p["spec"].get("nodeName") == n] for n in (PHX1, PHX2)}
    first, second = sorted((PHX1, PHX2), key=lambda n: len(on[n]))  # at most 1 of the 3 pods on `first`
    b.kill_node(first)  # one of two nodes, at most a third of the pods: within the limit
    with pytest.raises(BackendError, match=rf"blast radius .*: zone {PHX}: 2 of 2 nodes down at once"):
        b.kill_node(second)  # the first is still down: two at once
    # the replacements go to `second` while `first` is cordoned: all 3 pods of the zone sit there then
    phases = lambda: eks.pod_phases(["hashicups-phx-2a"])  # noqa: E731
    on_second = lambda: [p for p in eks.pods("hashicups-phx-2a") if p["spec"].get("nodeName") == second]  # noqa: E731
    assert wait_until(lambda: len(on_second()) == 3 and set(phases().values()) == {"Ready"}, 60)
    b.restore_node(first)
    assert wait_until(lambda: b.steady_state_problems() == [], 60)
    with pytest.raises(BackendError, match=rf"zone {PHX}: 3 of 3 pods down at once \(100%\), the limit is 50%"):
        b.kill_node(second)
    b.kill_pod(PHX, "product-api")  # a third of the zone's pods
    assert not any(n.unschedulable for n in eks.node_infos()) and b.ledger.entries() == []
    b.close()


def test_blast_radius_never_takes_the_last_region_replica(api: FakeApiServer, eks: KubeCluster, tmp_path: Path) -> None:
    b = _up(api, tmp_path, execute=True)  # the default limits: a whole zone may go, postgres' last replica never
    pg = _postgres(eks)
    pg_node = pg["spec"]["nodeName"]
    zone = eks.nodes()[pg_node]
    before = _writes(api)
    last = r"postgres is Region-only and this would take its last serving Region replica \(hashicups/postgres-"
    for call in (
        lambda: b.kill_pod(zone, "postgres"),
        lambda: b.set_pod_unready(zone, "postgres"),
        lambda: b.kill_node(pg_node),
        lambda: b.zone_outage(zone),
    ):
        with pytest.raises(BackendError, match=last):
            call()
    assert _writes(api) == before
    other_az = next(z for z in ("us-west-2a", "us-west-2b") if z != zone)
    # the other AZ holds the streaming replica (Region-only too, one replica): the same guard
    with pytest.raises(BackendError, match=r"postgres-replica is Region-only and this would take its last serving"):
        b.kill_node(NODE[other_az])
    assert _writes(api) == before
    b.kill_node(NODE[LAX])  # an edge node holds no Region-only service: allowed under the default limits
    b.restore_node(NODE[LAX])
    b.close()


def test_an_experiment_over_the_blast_radius_is_refused_before_anything(
    api: FakeApiServer, eks: KubeCluster, tmp_path: Path, capsys: Any
) -> None:
    from harness.cli import main

    b = _up(api, tmp_path)
    zone = eks.nodes()[_postgres(eks)["spec"]["nodeName"]]
    b.close()
    exp = json.loads((REPO / "experiments" / "kill-product-api-lax.json").read_text())
    exp["method"][0]["provider"]["arguments"] = {"zone": zone, "service": "postgres"}
    (tmp_path / "pg.json").write_text(json.dumps(exp))
    capsys.readouterr()
    before = _writes(api)
    assert main(["chaos", *_cli("--execute"), "pg.json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pg.json: method[0]: kill_pod: over the blast radius: postgres is")
    assert _writes(api) == before and not [d for d in (tmp_path / "runs").iterdir() if d.name != ".backend"]


# -- steady state ------------------------------------------------------------------------------------------------


def test_no_injection_while_the_steady_state_fails(
    api: FakeApiServer, eks: KubeCluster, tmp_path: Path, capsys: Any
) -> None:
    from harness.cli import main

    b = _up(api, tmp_path, execute=True)
    (pa,) = eks.pods("hashicups-las-1a", {"app": "product-api"})
    api.sim.call(lambda: api.sim.block_readiness("hashicups-las-1a", pa["metadata"]["name"]))
    assert wait_until(lambda: len(b.steady_state_problems()) == 2, 60)  # the pod, then its Deployment's status
    assert b.steady_state_problems() == [
        "Deployments not ready: hashicups-las-1a/product-api-las-1a 0/1 ready, 0 of 1 updated replicas available",
        f"pods not Ready: {pa['metadata']['name']} (NotReady)",
    ]
    before = _writes(api)
    with pytest.raises(BackendError, match=r"^steady state does not hold before the first injection, kill_pod in "
                                           rf"{LAX} refused, nothing injected: Deployments not ready: "):  # fmt: skip
        b.kill_pod(LAX, "product-api")
    assert _writes(api) == before
    capsys.readouterr()
    assert main(["chaos", *_cli("--execute"), str(REPO / "experiments" / "kill-product-api-lax.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert "steady state does not hold, nothing injected: Deployments not ready" in err
    assert _writes(api) == before and not [d for d in (tmp_path / "runs").iterdir() if d.name != ".backend"]
    b.close()


# -- kill switch ---------------------------------------------------------------------------------------------------


def test_kill_switch_file_rolls_back_at_once(
    api: FakeApiServer, eks: KubeCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "runs" / "gameday"
    run.mkdir(parents=True)
    monkeypatch.setenv("EH_RUN_DIR", str(run))
    b = _up(api, tmp_path, execute=True)
    import harness.backends.fence as fence

    polls: list[Path | None] = []  # what each of the watcher's polls found
    looked = fence.engaged_switch
    monkeypatch.setattr(fence, "engaged_switch", lambda paths: polls.append(looked(paths)) or polls[-1])
    stopped: list[int] = []  # the number of polls made when the experiment was told to stop
    b.on_abort = lambda: stopped.append(len(polls))
    b.zone_outage(PHX)
    b.set_pod_unready(LAX, "public-api")
    assert {e["primitive"] for e in b.ledger.entries()} == {"zone_outage", "set_pod_unready"}
    assert all(n.unschedulable for n in eks.node_infos() if n.zone == PHX)
    before = len(polls)
    (run / "ABORT").write_text("stop\n")
    assert wait_until(lambda: bool(stopped), 60)
    # at once: the poll after the file appeared (or the one under way) rolled back and stopped, counted not timed
    assert stopped[0] - before <= 2 and polls[-1] == run / "ABORT", (before, polls)
    assert not any(n.unschedulable for n in eks.node_infos())
    assert all(p["metadata"]["labels"].get("edge-harness.io/serving") != "false" for p in eks.pods("hashicups-lax-1a"))
    assert b.ledger.entries() == []
    with pytest.raises(BackendError, match=rf"^kill switch {run / 'ABORT'} is on: kill_pod in {LAX} refused"):
        b.kill_pod(LAX, "product-api")  # nothing more is injected while the switch is on
    b.close()


def test_abort_rolls_back_what_a_crashed_chaos_process_left_and_spares_others_cordons(
    api: FakeApiServer, eks: KubeCluster, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.cli import main

    run = tmp_path / "runs" / "gameday"
    run.mkdir(parents=True)
    monkeypatch.setenv("EH_RUN_DIR", str(run))
    crashed = _up(api, tmp_path, execute=True)
    crashed.kill_node(NODE[LAX])
    crashed.close()  # the process "died": nothing restored, the ledger remembers
    operator = NODE[LAS]
    eks.cordon(operator)  # someone else's maintenance: not the harness's to undo
    capsys.readouterr()
    assert main(["chaos", *_cli("--abort", str(run))]) == 0
    out = capsys.readouterr().out
    assert f"abort: kill switch on: {run / 'ABORT'}" in out
    assert f"abort: rolled back: kill_node {LAX} ({NODE[LAX]})" in out
    cordoned = {n.name for n in eks.node_infos() if n.unschedulable}
    assert cordoned == {operator}
    later = _backend(api, tmp_path, execute=True)
    later.restore_zone(LAS)  # a rollback never uncordons what the harness did not cordon
    assert {n.name for n in eks.node_infos() if n.unschedulable} == {operator}
    assert main(["chaos", *_cli("--abort", str(tmp_path / "nope"))]) == 2
    assert capsys.readouterr().err.strip() == f"{tmp_path / 'nope'}: not a run directory"


@pytest.mark.slow
def test_abort_stops_a_running_chaos_process_and_rolls_back_within_a_second(
    api: FakeApiServer, eks: KubeCluster, tmp_path: Path
) -> None:
    """The real thing: `harness chaos --execute` running chaostoolkit, `harness chaos --abort` from another shell."""
    b = _up(api, tmp_path)
    b.close()
    exp = json.loads((REPO / "experiments" / "zone-outage.json").read_text())
    exp["method"][0]["provider"]["arguments"] = {"zone": PHX, "duration_s": 120}
    exp["rollbacks"][0]["provider"]["arguments"] = {"zone": PHX}
    exp.pop("steady-state-hypothesis", None)
    (tmp_path / "long.json").write_text(json.dumps(exp))
    run = tmp_path / "runs" / "gameday"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    harness = [sys.executable, "-m", "harness", "chaos", *_cli()]
    chaos = subprocess.Popen(
        [*harness, "--allow-context", CTX, "--execute", "long.json", "--run-dir", str(run)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert wait_until(lambda: all(n.unschedulable for n in eks.node_infos() if n.zone == PHX), 60), (
            chaos.poll(),
            (run / "chaos" / "01-long" / "chaos.log").read_text()
            if (run / "chaos" / "01-long" / "chaos.log").exists()
            else "",
        )
        t0 = time.monotonic()
        ab = subprocess.run([*harness, "--abort", str(run)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60)  # fmt: skip
        assert ab.returncode == 0, ab.stdout + ab.stderr
        assert not any(n.unschedulable for n in eks.node_infos())
        out, _ = chaos.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        if chaos.poll() is None:
            chaos.kill()
            chaos.wait()
    assert took < 30, took  # far from the 120 s the fault was meant to last
    assert chaos.returncode == 1, out
    journal = json.loads((run / "chaos" / "01-long" / "journal.json").read_text())
    assert journal["status"] == "interrupted"
    assert [r["status"] for r in journal["rollbacks"]] == ["succeeded"]


def test_kill_switch_during_an_injection_waits_for_it_then_rolls_it_back(
    api: FakeApiServer, eks: KubeCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The switch's rollback runs in its own thread: it must not slip between a ledger entry and its act."""
    run = tmp_path / "runs" / "gameday"
    run.mkdir(parents=True)
    monkeypatch.setenv("EH_RUN_DIR", str(run))
    b = _up(api, tmp_path, execute=True)
    stopped: list[bool] = []
    b.on_abort = lambda: stopped.append(True)
    b.set_pod_unready(LAS, "frontend")  # the first injection arms the watcher
    cordon = b.cluster.cordon

    def slow_cordon(node: str, unschedulable: bool = True) -> None:
        cordon(node, unschedulable)
        if unschedulable and node == PHX1:  # half-way through the zone outage, someone pulls the switch
            (run / "ABORT").write_text("stop\n")
            time.sleep(0.6)  # the watcher sees it meanwhile

    monkeypatch.setattr(b.cluster, "cordon", slow_cordon)
    b.zone_outage(PHX)
    assert wait_until(lambda: bool(stopped), 60)
    assert not any(n.unschedulable for n in eks.node_infos()), [n.name for n in eks.node_infos() if n.unschedulable]
    assert b.ledger.entries() == []
    b.close()

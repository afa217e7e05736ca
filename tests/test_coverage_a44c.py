"""Paths no other test ran (task a44c: coverage measured per area, each uncovered behaviour pinned here).

Each test would fail if the branch it names were broken or removed: the report's page for a verdict whose
fault names a zone the run's topology lacks (a verdict judged elsewhere, or a topology edited since), and the
kind and existing backends' error branches that only a real cluster, or a broken host, would reach.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.backends import kind as kind_mod
from harness.backends.existing import (
    ACCESS_LOG_NEEDED,
    ENTRY_ENV,
    ExistingBackend,
    _access_logs_unusable,
    _toleration_text,
    check_placement,
    interrupt_chaos_process,
    parse_entrypoints,
)
from harness.backends.kind import KindBackend, kind_available
from harness.backends.kube import NodeInfo
from harness.backends.kube import inventory as inventory_mod
from harness.backends.kube.api import KubeApiError, kubeconfig_user
from harness.backends.kube.apply import ConsulInstall
from harness.backends.kube.forward import ForwardRelay
from harness.backends.kube.inventory import InventoryWatcher
from harness.contract.inventory import Inventory
from harness.contract.names import LABEL_APP, LABEL_POD_ZONE, LABEL_ZONE
from harness.contract.rundir import ACCESS_LOG_FIELDS
from harness.contract.scheduling import Taint, Toleration
from harness.errors import BackendError, InputError
from harness.interrupt import SIGNALS, handle_signals
from harness.render import render, write
from harness.render.manifests import Manifests
from harness.render.manifests import load as load_manifests
from harness.report.html import MAX_BUCKETS, _bucket, render_html
from harness.topology import Edition, load_topology
from harness.verify import Verdict, verify
from harness.verify.synth import FaultSpec, Scenario, write_run
from tests.conftest import wait_until
from tests.kubefake import rendered

LAX = "us-west-2-lax-1a"
STRANGER = "us-west-2-zzz-9z"  # a zone name the default topology does not have


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Verdict]:
    sc = Scenario(
        load_topology(),
        duration_s=40,
        rate_per_zone=2,
        faults=[FaultSpec("kill-product-api-lax", "service-down", LAX, ("product-api",), 10, 20, 1.0, 1.0)],
    )
    run = write_run(tmp_path_factory.mktemp("a44c-report") / "run", sc)
    return run, verify(run)


def test_report_names_a_fault_zone_the_topology_lacks(small_run: tuple[Path, Verdict]) -> None:
    """A verdict's fault in a zone the run's topology does not list (a verdict copied beside another run's
    records, a topology edited since): the page still renders, with that zone's own timeline row and section
    saying "not in the topology", rather than failing with a KeyError from `Topology.zone`."""
    run, verdict = small_run
    moved = dataclasses.replace(verdict.faults[0], zone=STRANGER)
    page = render_html(run, dataclasses.replace(verdict, faults=[moved]))
    assert f"{STRANGER} (not in the topology)" in page  # the timeline row's label
    assert re.search(rf"{STRANGER} <small>\(not in the topology\)</small>", page)  # the zone section's head


def test_report_control_known_zone_has_its_type(small_run: tuple[Path, Verdict]) -> None:
    """Control: the same fault in a zone the topology has is labelled with that zone's type, never "not in"."""
    run, verdict = small_run
    page = render_html(run, verdict)
    assert "not in the topology" not in page
    assert f"{LAX} <small>(" in page and "Local Zone" in page


# -- kind backend: the error branches a healthy host never takes -------------------------------------------

Answer = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


def _done(argv: Sequence[str], out: str = "", rc: int = 0, err: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess(list(argv), rc, out, err)


class FakeRun:
    """`subprocess.run` as the kind backend calls it: each argv (tool path first) answered by `answer`."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str], **_kw: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append([Path(argv[0]).name, *argv[1:]])
        return self.answer(argv)


@pytest.fixture
def tools_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every tool the kind backend looks for is "found" (the fake `run` answers for it)."""
    monkeypatch.setattr(kind_mod, "find_tool", lambda name: f"/fake/bin/{name}")


def _kind(tmp_path: Path, answer: Answer, **kw: Any) -> tuple[KindBackend, FakeRun]:
    run = FakeRun(answer)
    said: list[str] = []
    b = KindBackend("edge", tmp_path / "wd", run=run, progress=said.append, **kw)
    b.said = said  # type: ignore[attr-defined]
    return b, run


def _hangs(argv: list[str]) -> subprocess.CompletedProcess[str]:
    raise subprocess.TimeoutExpired(argv, 900)


def test_kind_status_when_kind_hangs_is_one_line_not_a_traceback(tmp_path: Path, tools_on_path: None) -> None:
    """`kind get clusters` that never answers (a wedged Docker daemon): `status` says so in one line naming the
    command, rather than raising subprocess.TimeoutExpired out of `harness status`."""
    b, _run = _kind(tmp_path, _hangs)
    st = b.status()
    assert not st.up and st.detail == "`kind get clusters` did not finish in 900s"
    with pytest.raises(BackendError, match=r"^`kind get clusters` did not finish in 900s$"):
        b.cluster_exists()


def test_kind_status_cluster_without_kubeconfig_says_run_up(tmp_path: Path, tools_on_path: None) -> None:
    """kind lists the cluster but this workdir has no kubeconfig (another workdir made it): not up, and why."""
    b, _run = _kind(tmp_path, lambda argv: _done(argv, "other\nedge\n"))
    st = b.status()
    assert not st.up
    assert st.detail == f"kind cluster edge: kind cluster edge: no kubeconfig at {b.kubeconfig}; run up first"


def test_kind_status_control_absent_cluster(tmp_path: Path, tools_on_path: None) -> None:
    """Control: kind answers and the cluster is not among its clusters: "does not exist"."""
    b, _run = _kind(tmp_path, lambda argv: _done(argv, "other\n"))
    st = b.status()
    assert not st.up and st.detail == "kind cluster edge does not exist"


def test_kind_down_without_kind_keeps_the_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`down` where kind is not on PATH: one line naming kind and where to get it, and the state file (what a
    later `down` needs) is kept, not deleted as if the cluster were gone."""
    monkeypatch.setattr(kind_mod, "find_tool", lambda name: None)
    b, run = _kind(tmp_path, lambda argv: _done(argv))
    b._save_state(cluster="edge")
    with pytest.raises(BackendError, match=r"kind backend needs `kind` on PATH \(https://kind\.sigs\.k8s\.io/"):
        b.down()
    assert b._state_file.is_file() and run.calls == []


def test_kind_down_control_deletes_and_forgets(tmp_path: Path, tools_on_path: None) -> None:
    """Control: with kind, `down` deletes the cluster by name and removes the state file."""
    b, run = _kind(tmp_path, lambda argv: _done(argv))
    b._save_state(cluster="edge")
    b.down()
    assert run.calls == [["kind", "delete", "cluster", "--name", "edge", "--kubeconfig", str(b.kubeconfig)]]
    assert not b._state_file.exists()


def _docker_port(said: str) -> Answer:
    return lambda argv: _done(argv, said) if argv[1:2] == ["port"] else _done(argv)


def test_kind_entrypoints_docker_port_nonsense_is_one_line(tmp_path: Path, tools_on_path: None) -> None:
    """A state without entry ports (a cluster reused by another workdir) asks Docker; an answer that names no
    host port fails in one line quoting it, not with an IndexError."""
    m = rendered(tmp_path)
    b, _run = _kind(tmp_path, _docker_port(""), manifests=m)
    with pytest.raises(BackendError, match=r"^`docker port edge-control-plane \d+/tcp` said ''$"):
        b.entrypoints()


def test_kind_entrypoints_control_read_from_docker_and_kept(tmp_path: Path, tools_on_path: None) -> None:
    """Control: Docker's answer (IPv4 line first, as `docker port` prints) gives each zone's URL, kept in the
    state so the next call asks nothing."""
    m = rendered(tmp_path)
    b, run = _kind(tmp_path, _docker_port("0.0.0.0:41234\n[::]:41234\n"), manifests=m)
    urls = b.entrypoints()
    zones = sorted(z.name for z in m.topology.zones)
    assert urls == {z: "http://127.0.0.1:41234" for z in zones}
    asked = len(run.calls)
    assert asked == len(zones) and b.entrypoints() == urls and len(run.calls) == asked


def test_kind_inotify_unreadable_is_said_and_up_goes_on(tmp_path: Path, tools_on_path: None) -> None:
    """A node where the limits cannot be read (`cat` missing or refused): said in one line with the fix, no
    refusal (the cluster may well do), and no crash on the non-numbers."""
    b, _run = _kind(tmp_path, lambda argv: _done(argv, "cat: not found", rc=1))
    b._check_inotify()
    assert len(b.said) == 1 and b.said[0].startswith("inotify limits of the Docker host not read (cat: not found)")  # type: ignore[attr-defined]


def test_kind_inotify_control_enough_says_nothing(tmp_path: Path, tools_on_path: None) -> None:
    """Control: limits at or above kind's asks: nothing said, nothing refused."""
    b, _run = _kind(tmp_path, lambda argv: _done(argv, "1048576\n8192\n"))
    b._check_inotify()
    assert b.said == []  # type: ignore[attr-defined]


def test_kind_available_docker_info_hangs(monkeypatch: pytest.MonkeyPatch) -> None:
    """`docker info` that hangs (a daemon stuck starting): the kind backend is not available, and why."""
    monkeypatch.setattr(kind_mod, "find_tool", lambda name: f"/fake/bin/{name}")
    monkeypatch.setattr(kind_mod.subprocess, "run", lambda argv, **kw: _hangs(argv))
    ok, why = kind_available()
    assert not ok and why.startswith("docker info failed: Command '['/fake/bin/docker', 'info'")


def test_kind_available_control(monkeypatch: pytest.MonkeyPatch) -> None:
    """Control: Docker answers with its version: available, saying which."""
    monkeypatch.setattr(kind_mod, "find_tool", lambda name: f"/fake/bin/{name}")
    monkeypatch.setattr(kind_mod.subprocess, "run", lambda argv, **kw: _done(argv, "27.3.1\n"))
    assert kind_available() == (True, "Docker 27.3.1 answers and kind, helm, kubectl are installed")


def test_kind_helm_without_pinned_chart_is_refused(tmp_path: Path, tools_on_path: None) -> None:
    """Manifests whose chart has no repo/version (rendered by an older harness): refused naming the file, before
    helm runs; a pinned chart gets a runner that calls helm."""
    m = rendered(tmp_path)
    b, run = _kind(tmp_path, lambda argv: _done(argv))
    with pytest.raises(BackendError, match=r"manifest\.json: chart repo/version missing \(re-render\)$"):
        b._helm_runner(m, {"name": "consul", "repo": "https://helm.releases.hashicorp.com"})
    assert run.calls == []
    helm = b._helm_runner(m, {"name": "consul", "repo": "https://helm.releases.hashicorp.com", "version": "1.9.11"})
    helm(["version"])
    assert run.calls == [["helm", "version"]]


# -- existing backend: check_consul's refusals of a Consul it cannot use ------------------------------------


class _ConsulOnly:
    """A cluster that answers `find_consul` only: check_consul's refusals come before any other call."""

    def __init__(self, found: ConsulInstall) -> None:
        self.found = found

    def find_consul(self) -> ConsulInstall:
        return self.found


def _consul(version: str, image: str, injectors: int = 1) -> ConsulInstall:
    return ConsulInstall("consul", "consul", image, version, 1, injectors, "consul-ui", 80)


def _check(tmp_path: Path, found: ConsulInstall, edition: str = "ce") -> None:
    m = rendered(tmp_path) if edition == "ce" else _enterprise(tmp_path)
    b = ExistingBackend("eks-lab", workdir=tmp_path / "runs", cluster=_ConsulOnly(found))  # type: ignore[arg-type]
    b.check_consul(m)


def _enterprise(tmp_path: Path) -> Manifests:
    out = tmp_path / "ent"
    write(render(load_topology(), Edition("enterprise")), out)
    return load_manifests(out)


def test_existing_consul_pinned_by_digest_alone_is_refused_as_untagged(tmp_path: Path) -> None:
    """A server image pinned by digest only has no tag to read a version from: refused saying so and how to
    fix it, not as "too old" (a wrong reason) and not let through unchecked."""
    digest = "hashicorp/consul@sha256:" + "a" * 64
    with pytest.raises(BackendError, match=r"has no tag to read its version from: .* name:1\.22\.7@sha256:"):
        _check(tmp_path, _consul("", digest))


def test_existing_enterprise_manifests_on_a_ce_consul_are_refused(tmp_path: Path) -> None:
    """Enterprise manifests (namespaces, redirects) against a CE server: refused up front, naming both, where the
    webhook would otherwise reject the namespaced config entries one by one."""
    with pytest.raises(BackendError, match=r"the manifests are Enterprise, the cluster's Consul 1\.22\.7 is not$"):
        _check(tmp_path, _consul("1.22.7", "hashicorp/consul:1.22.7"), edition="enterprise")


def test_existing_consul_controls_pass_those_checks(tmp_path: Path) -> None:
    """Controls: a tagged CE server with CE manifests, and an -ent server with Enterprise manifests, pass the tag
    and edition checks (they stop at the next one, the missing connect-injector this fake reports)."""
    no_injector = r"has no Ready connect-injector"
    with pytest.raises(BackendError, match=no_injector):
        _check(tmp_path, _consul("1.22.7", "hashicorp/consul:1.22.7", injectors=0))
    with pytest.raises(BackendError, match=no_injector):
        _check(tmp_path, _consul("1.22.7-ent", "hashicorp/consul-enterprise:1.22.7-ent", injectors=0), "enterprise")


# -- existing backend: the mesh's access-log setup, entry points and placement, as pure functions ---------------

_FULL = {f: ACCESS_LOG_FIELDS[f] for f in ACCESS_LOG_NEEDED}


@pytest.mark.parametrize(
    ("logs", "why"),
    [
        (
            {"enabled": True, "type": "syslog"},
            "accessLogs.type 'syslog' is not one Consul knows (stdout, stderr, file)",
        ),
        (
            {"enabled": True, "jsonFormat": json.dumps(_FULL), "textFormat": "%START_TIME%"},
            "accessLogs.jsonFormat and accessLogs.textFormat are both set (Consul refuses the entry)",
        ),
        ({"enabled": True, "jsonFormat": "{start_time: 1"}, "accessLogs.jsonFormat is not JSON ("),
        ({"enabled": True, "jsonFormat": '["%START_TIME%"]'}, "accessLogs.jsonFormat is not a JSON object"),
        (
            {"enabled": True, "jsonFormat": json.dumps({**_FULL, "upstream_host": "%UPSTREAM_CLUSTER%"})},
            "accessLogs.jsonFormat writes another value as upstream_host ('%UPSTREAM_CLUSTER%', not %UPSTREAM_HOST%)",
        ),
    ],
)
def test_existing_access_logs_a_mesh_cannot_give_the_verdict(logs: dict[str, Any], why: str) -> None:
    """A cluster's own ProxyDefaults whose access logs the verdict cannot read (a sink Consul does not know, both
    formats, a jsonFormat that is not a JSON object of the needed fields): each named, never taken as usable."""
    said = _access_logs_unusable({"accessLogs": logs})
    assert said is not None and said.startswith(why), said


@pytest.mark.parametrize(
    "logs",
    [
        {"enabled": True},
        {"enabled": True, "type": "stderr", "jsonFormat": json.dumps({**_FULL, "extra": "%PROTOCOL%"})},
    ],
)
def test_existing_access_logs_control_usable(logs: dict[str, Any]) -> None:
    """Control: Consul's default JSON, and a jsonFormat that writes each needed field with its own operator."""
    assert _access_logs_unusable({"accessLogs": logs}) is None


@pytest.mark.parametrize(
    ("values", "env", "field", "why"),
    [
        ((), '["http://a"]', ENTRY_ENV, 'expected a JSON object {"<zone>": "http://..."}'),
        ((), '{"z": 8080}', ENTRY_ENV, 'expected a JSON object {"<zone>": "http://..."}'),
        (("us-west-2-lax-1a:http://a",), None, "--entrypoint", "expected ZONE=URL, got 'us-west-2-lax-1a:http://a'"),
        (("us-west-2-lax-1a=",), None, "--entrypoint", "expected ZONE=URL"),
    ],
)
def test_existing_bad_entrypoints_name_their_source(
    values: tuple[str, ...], env: str | None, field: str, why: str
) -> None:
    """A wrong `EH_ENTRYPOINTS` or `--entrypoint`: an input error naming which of the two, and what was expected."""
    with pytest.raises(InputError) as info:
        parse_entrypoints(values, env)
    assert info.value.source == field and why in info.value.message, info.value


def test_existing_entrypoints_control_flag_wins_over_env() -> None:
    """Control: both given, the flag wins for its zone, the env var fills the rest, trailing slashes dropped."""
    got = parse_entrypoints(["a=https://flag.example/"], '{"a": "http://env-a", "b": "http://env-b/x/"}')
    assert got == {"a": "https://flag.example", "b": "http://env-b/x"}


def _node(name: str, zone: str, *taints: Taint) -> NodeInfo:
    labels = {LABEL_ZONE: zone, "kubernetes.io/hostname": name}
    return NodeInfo(name, zone, "us-west-2", "local-zone", "10.0.0.1", (), False, labels, taints)


def _workload(zone: str, tolerations: list[dict[str, str]]) -> dict[str, Any]:
    term = {"matchExpressions": [{"key": LABEL_ZONE, "operator": "In", "values": [zone]}]}
    spec = {
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}},
        "tolerations": tolerations,
        "containers": [{"name": "app", "image": "x"}],
    }
    labels = {LABEL_APP: "product-api", LABEL_POD_ZONE: zone}
    return {"kind": "Deployment", "metadata": {"name": "product-api"},
            "spec": {"template": {"metadata": {"labels": labels}, "spec": spec}}}  # fmt: skip


def test_existing_placement_names_a_zone_no_node_matches(tmp_path: Path) -> None:
    """Workloads of a zone none of whose nodes carry its label: the problem says no node matches their affinity."""
    problems = check_placement([_node("n1", LAX)], [_workload("us-west-2-phx-2a", [])])
    assert len(problems) == 1 and "no node matches their node affinity" in problems[0], problems


def test_existing_placement_keyless_toleration_names_its_effect() -> None:
    """A keyless `Exists` toleration with an effect tolerates every taint OF THAT EFFECT only (Kubernetes'
    ToleratesTaint: the effect is compared first). The problem line named it "every taint", which contradicts the
    NoExecute taint it names as not tolerated in the same sentence."""
    node = _node("n1", LAX, Taint("dedicated", "edge", "NoExecute"))
    problems = check_placement([node], [_workload(LAX, [{"operator": "Exists", "effect": "NoSchedule"}])])
    assert len(problems) == 1, problems
    assert "has taint dedicated=edge:NoExecute" in problems[0]
    assert "(they tolerate every NoSchedule taint)" in problems[0], problems


def test_existing_placement_control_keyless_toleration_without_effect_places() -> None:
    """Control: a keyless `Exists` toleration without effect tolerates every taint: the workload has a node."""
    node = _node("n1", LAX, Taint("dedicated", "edge", "NoExecute"))
    assert check_placement([node], [_workload(LAX, [{"operator": "Exists"}])]) == []
    assert _toleration_text(Toleration(operator="Exists")) == "every taint"


# -- existing backend: the kill switch's stop of the experiment in this process -----------------------------


def test_interrupt_chaos_process_under_chaostoolkit_signals_sigusr1(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under `chaos run` (a SIGUSR1 handler: chaostoolkit's "exit gracefully"), the kill switch's stop is that
    signal, so chaostoolkit interrupts the action and plays its rollbacks; not a KeyboardInterrupt."""
    got: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, _frame: got.append(signum))
    try:
        interrupt_chaos_process()
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)  # the handler runs in the main thread at its next check
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert got == [signal.SIGUSR1]


def test_interrupt_chaos_process_control_without_handler_interrupts_main() -> None:
    """Control: a library caller (no SIGUSR1 handler, which would otherwise kill the process) gets a
    KeyboardInterrupt in the main thread instead, like a Ctrl-C.

    That caller has Python's own SIGINT handler: set here, not inherited from the test runner, which ignores
    SIGINT when started as a background job, and then `interrupt_main` does nothing (DID NOT RAISE)."""
    previous = signal.signal(signal.SIGUSR1, signal.SIG_DFL), signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            interrupt_chaos_process()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        signal.signal(signal.SIGUSR1, previous[0])
        signal.signal(signal.SIGINT, previous[1])


# -- kube: reading the kubeconfig as kubectl does ------------------------------------------------------------


def _kubeconfig(path: Path, ctx: str, user: str, command: str) -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "contexts": [{"name": ctx, "context": {"cluster": "c", "user": user}}],
        "users": [{"name": user, "user": {"exec": {"apiVersion": "v1", "command": command}}}],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


def test_kubeconfig_env_paths_first_wins_missing_skipped_relative_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KUBECONFIG's list as client-go loads it: a missing path skipped, the first file naming a context or user
    wins, and an exec plugin named by a relative path resolved against ITS kubeconfig's directory (so the
    credential-plugin check looks for the right file)."""
    a = _kubeconfig(tmp_path / "a" / "config", "lab", "u", "./bin/get-token")
    b = _kubeconfig(tmp_path / "b" / "config", "lab", "u", "aws")
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(tmp_path / "gone"), str(a), str(b)]))
    user = kubeconfig_user(None, "lab")
    assert user["exec"]["command"] == str(tmp_path / "a" / "./bin/get-token")
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(b), str(a)]))
    assert kubeconfig_user(None, "lab")["exec"]["command"] == "aws"  # a bare name: PATH's, left as it is


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("contexts: [oops\n", "not YAML ("),
        ("contexts: {lab: {}}\n", "not a kubeconfig (contexts and users must be lists of entries)"),
        ("- just\n- a list\n", "not a kubeconfig (contexts and users must be lists of entries)"),
    ],
)
def test_kubeconfig_not_a_kubeconfig_is_one_input_line(tmp_path: Path, content: str, why: str) -> None:
    """A given kubeconfig that is not one: an input error naming the file and what is wrong with it."""
    path = tmp_path / "kc"
    path.write_text(content)
    with pytest.raises(InputError) as info:
        kubeconfig_user(path, "lab")
    assert info.value.source == str(path) and info.value.message.startswith(why), info.value


def test_kubeconfig_a_directory_or_missing_file_given(tmp_path: Path) -> None:
    """A directory, or a given file that is not there: named as such (a KUBECONFIG path that is missing is
    skipped instead, as kubectl does)."""
    with pytest.raises(InputError, match="a directory, not a kubeconfig file"):
        kubeconfig_user(tmp_path, "lab")
    with pytest.raises(InputError, match="no such file"):
        kubeconfig_user(tmp_path / "nope", "lab")


def test_kubeconfig_control_context_missing_lists_what_it_has(tmp_path: Path) -> None:
    """Control: a well-formed file without the context: the error lists the contexts it has."""
    path = _kubeconfig(tmp_path / "kc", "lab", "u", "aws")
    with pytest.raises(InputError, match=r"no context 'prod' \(it has: lab\)"):
        kubeconfig_user(path, "prod")
    assert kubeconfig_user(path, "lab")["exec"]["command"] == "aws"


# -- kube: the Consul relay's replay of a first exchange a dead forward swallowed ---------------------------


class _Server:
    """A loopback TCP server: `silent` reads a request and closes without a byte back (what kubectl does on a
    connection to a pod that is gone), otherwise it answers b"pong:" + what it read. `got`: every request."""

    def __init__(self, silent: bool) -> None:
        self.silent = silent
        self.got: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = conn.recv(65536)
                self.got.append(data)
                if not self.silent:
                    conn.sendall(b"pong:" + data)

    def close(self) -> None:
        self.sock.close()


class _Fwd:
    """A stand-in for one `kubectl port-forward` (alive, at `port`)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.alive = True

    def stop(self) -> None:
        self.alive = False


class _Relay(ForwardRelay):
    """The relay with each new forward taken from `ports` in turn (the last one repeated)."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.made: list[_Fwd] = []
        super().__init__(["kubectl"], "consul", "svc/consul-ui", 8500)

    def _live_port(self, failed: Any = None) -> tuple[Any, int]:
        with self._lock:
            fwd = self._forward
            if fwd is None or fwd is failed:
                fwd = _Fwd(self.ports[min(len(self.made), len(self.ports) - 1)])
                self.made.append(fwd)
                self._forward = fwd  # type: ignore[assignment]
            return fwd, fwd.port


def _ask(relay: ForwardRelay, data: bytes = b"GET /v1/status/leader") -> bytes:
    """What the relay answered `data`; b"" when it closed the connection unanswered (a close with the request
    still unread is a reset: the same "no answer" to the client)."""
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as c:
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)
        out = b""
        try:
            while chunk := c.recv(65536):
                out += chunk
        except ConnectionResetError:
            assert out == b"", out  # a reset after part of an answer would be a cut answer, not "none"
        return out


def test_relay_gives_up_after_replays_all_unanswered_and_says_why() -> None:
    """Every forward closes the first exchange unanswered (the server pod gone each time): the client's
    connection ends after `REPLAYS` forwards, and the relay's `errors` says so, naming the target."""
    silent = _Server(silent=True)
    relay = _Relay([silent.port])
    try:
        assert _ask(relay) == b""
        assert wait_until(lambda: bool(relay.errors), 10)
        assert relay.errors == [
            f"consul/svc/consul-ui:8500: {ForwardRelay.REPLAYS} forwards closed the connection without an answer"
        ]
        assert len(relay.made) == ForwardRelay.REPLAYS and len(silent.got) == ForwardRelay.REPLAYS
    finally:
        relay.close()
        silent.close()


def test_relay_unreachable_forward_is_said_not_hung() -> None:
    """A forward whose local port takes no connection: the client's connection is closed and the reason kept."""
    gone = socket.create_server(("127.0.0.1", 0))
    port = int(gone.getsockname()[1])
    gone.close()  # nothing listens there now
    relay = _Relay([port])
    try:
        assert _ask(relay) == b""
        assert wait_until(lambda: bool(relay.errors), 10)
        assert relay.errors[0].startswith("no forward to consul/svc/consul-ui:8500: [Errno 111]"), relay.errors
    finally:
        relay.close()


def test_relay_control_replays_the_first_exchange_on_a_fresh_forward() -> None:
    """Control: the first forward swallows the request, the second answers: the client gets the answer to the
    very bytes it sent (replayed), and no error is kept."""
    silent, live = _Server(silent=True), _Server(silent=False)
    relay = _Relay([silent.port, live.port])
    try:
        assert _ask(relay, b"GET /v1/agent/self") == b"pong:GET /v1/agent/self"
        assert live.got == [b"GET /v1/agent/self"] and relay.errors == [] and len(relay.made) == 2
    finally:
        relay.close()
        silent.close()
        live.close()


# -- interrupt: handle_signals outside the main thread --------------------------------------------------------


def test_handle_signals_outside_the_main_thread_is_a_no_op() -> None:
    """A command run from a worker thread (a library caller, a test's thread): Python cannot install handlers
    there (`signal.signal` raises ValueError), so the block runs without them and leaves the process's own
    handlers alone, rather than failing before the command starts."""
    before = {s: signal.getsignal(s) for s in SIGNALS}
    seen: list[object] = []

    def body() -> None:
        try:
            with handle_signals() as received:
                seen.append(list(received))
        except BaseException as exc:  # what the thread met is the result
            seen.append(exc)

    t = threading.Thread(target=body)
    t.start()
    t.join(10)
    assert seen == [[]]
    assert {s: signal.getsignal(s) for s in SIGNALS} == before


def test_handle_signals_control_main_thread_installs_then_restores() -> None:
    """Control: in the main thread the handlers are in force within the block and the caller's come back."""
    before = {s: signal.getsignal(s) for s in SIGNALS}
    with handle_signals():
        assert all(signal.getsignal(s) is not before[s] for s in SIGNALS)
    assert {s: signal.getsignal(s) for s in SIGNALS} == before


# -- existing backend: the game day's rails as said before anything runs ------------------------------------


def _eks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **kw: Any) -> ExistingBackend:
    for k in ("EH_ALLOW_CONTEXTS", "EH_ALLOW_FILE", "EH_MAX_SHARE", "EH_EXECUTE"):
        monkeypatch.delenv(k, raising=False)
    return ExistingBackend("eks-lab", workdir=tmp_path / "runs", **kw)


def test_existing_max_share_env_not_a_number_is_one_input_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EH_MAX_SHARE that is not a share: an input error naming the variable and the value (exit 2), never a
    ValueError traceback nor a blast radius silently left at the whole zone."""
    monkeypatch.setenv("EH_MAX_SHARE", "half")
    with pytest.raises(InputError) as info:
        ExistingBackend("eks-lab", workdir=tmp_path / "runs")
    assert info.value.line == "EH_MAX_SHARE: expected a share between 0 and 1 (e.g. 0.5), got 'half'"


def test_existing_max_share_control_the_smallest_rail_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Control: the flag, and EH_MAX_SHARE when set: the smaller share is the blast radius (the stricter rail)."""
    assert _eks(tmp_path, monkeypatch, max_share=0.5).blast.max_share == 0.5
    monkeypatch.setenv("EH_MAX_SHARE", "0.25")
    assert ExistingBackend("eks-lab", workdir=tmp_path / "runs", max_share=0.5).blast.max_share == 0.25


def test_existing_why_not_names_the_rail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Why a primitive is refused, as the plan and `harness chaos` say it: a service link cannot be changed from
    inside Kubernetes; a destructive fault off the allow-list names both ways onto it for this context."""
    b = _eks(tmp_path, monkeypatch)
    assert "cannot be changed from inside Kubernetes" in b.why_not("set_link")
    assert b.why_not("kill_node") == (
        "destructive chaos needs the context on the allow-list (--allow-context eks-lab or EH_ALLOW_CONTEXTS=eks-lab)"
    )
    assert not b.can("kill_node") and b.can("kill_pod") and not b.can("set_link")


def test_existing_why_not_control_allowed_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Control: on the allow-list, a destructive primitive is possible and no allow-list reason is given."""
    b = _eks(tmp_path, monkeypatch, allow_destructive_contexts=("eks-lab",))
    assert b.can("kill_node") and b.can("zone_outage")
    assert b.why_not("kill_node") == "not supported by this backend"  # KubeBackend's: nothing of the rails


# -- report: the time buckets of a run longer than the nice steps reach -------------------------------------


@pytest.mark.parametrize("days", [200, 365.25 * 3])
def test_report_bucket_of_a_very_long_run_keeps_the_page_bounded(days: float) -> None:
    """A run longer than MAX_BUCKETS days (a soak left running): past the largest nice step (a day) the bucket
    grows with the run, so the charts still have at most MAX_BUCKETS columns (the page's size is bounded)."""
    duration = days * 86400
    b = _bucket(duration)
    assert b > 86400 and math.ceil(duration / b) <= MAX_BUCKETS


def test_report_bucket_control_nice_steps() -> None:
    """Control: a run the nice steps cover gets the smallest nice step within MAX_BUCKETS columns."""
    assert _bucket(60) == 1.0 and _bucket(3600) == 30.0 and _bucket(MAX_BUCKETS * 86400) == 86400.0


# -- kube: the pod watch's answers a real API server gives and the fake never did -----------------------------


class _Stream:
    """A watch stream: `lines` given, then (`hold`) open until closed, as a watch that has nothing more to say."""

    def __init__(self, lines: list[str], hold: bool) -> None:
        self._lines = lines
        self._hold = hold
        self.closed = threading.Event()

    def lines(self) -> Iterator[str]:
        yield from self._lines
        if self._hold:
            self.closed.wait(10)

    def close(self) -> None:
        self.closed.set()


class _WatchedCluster:
    """`nodes`, `list_pods` and `stream_lines` as InventoryWatcher calls them; each watch's stream from `streams`
    (then one that holds), each watch's resourceVersion kept in `resumed_at`."""

    def __init__(self, streams: list[Any]) -> None:
        self.streams = streams
        self.lists = 0
        self.resumed_at: list[str] = []

    def nodes(self) -> dict[str, str]:
        return {}

    def list_pods(self) -> tuple[list[dict[str, Any]], str]:
        self.lists += 1
        return [], str(100 * self.lists)

    def stream_lines(self, path: str, query: list[tuple[str, str]], read_timeout: float) -> _Stream:
        self.resumed_at.append(dict(query)["resourceVersion"])
        nxt = self.streams.pop(0) if self.streams else _Stream([], hold=True)
        if isinstance(nxt, Exception):
            raise nxt
        return nxt


def _watch(streams: list[Any], on_forbidden: Callable[[str], None] | None = None) -> tuple[Any, _WatchedCluster]:
    cluster = _WatchedCluster(streams)
    w = InventoryWatcher(cluster, Inventory(), on_forbidden=on_forbidden)  # type: ignore[arg-type]
    w.start()
    return w, cluster


def test_pod_watch_expired_410_relists_and_resumes_from_the_new_version() -> None:
    """A watch's resourceVersion too old for the API server (an ERROR event with code 410, "Gone": etcd compacted
    it, routine on a real cluster after a few minutes): the watcher lists the pods again and resumes from that
    list's version, rather than re-watching from the expired one forever and missing every change."""
    gone = json.dumps(
        {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old resource version"}}
    )
    w, cluster = _watch([_Stream([gone], hold=False), _Stream([], hold=True)])
    try:
        assert wait_until(lambda: len(cluster.resumed_at) >= 2, 10)
        assert cluster.lists == 2 and cluster.resumed_at[:2] == ["100", "200"]
        assert w.errors == ["watch: too old resource version"]
    finally:
        w.stop()


def test_pod_watch_control_other_error_event_resumes_without_relist() -> None:
    """Control: an ERROR event that is not 410 (and a line that is not JSON) is kept as an error, and the next
    watch resumes from the version it had: no relist."""
    other = json.dumps({"type": "ERROR", "object": {"kind": "Status", "code": 500, "message": "etcd hiccup"}})
    w, cluster = _watch([_Stream(["not json", other], hold=False), _Stream([], hold=True)])
    try:
        assert wait_until(lambda: len(cluster.resumed_at) >= 2, 10)
        assert cluster.lists == 1 and cluster.resumed_at[:2] == ["100", "100"]
        assert w.errors == ["watch: etcd hiccup"]
    finally:
        w.stop()


def test_pod_watch_forbidden_is_said_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A role without watch on pods (HTTP 403, every attempt): said once through on_forbidden and kept in
    `forbidden`, however often the watch is refused again; each refusal kept in `errors`. (The backoff between
    attempts is shortened here so that the second refusal comes at once; counted, not timed.)"""
    monkeypatch.setattr(inventory_mod, "MAX_BACKOFF_S", 0.01)
    said: list[str] = []
    refusal = KubeApiError(403, "GET", "/api/v1/pods", 'pods is forbidden: cannot "watch"')
    w, cluster = _watch([refusal, refusal, refusal], on_forbidden=said.append)
    try:
        assert wait_until(lambda: len(cluster.resumed_at) >= 4, 10)  # three refusals, then a watch that holds
        assert said == ['pods is forbidden: cannot "watch"'] and w.forbidden == said[0]
        assert len(w.errors) == 3
    finally:
        w.stop()
    assert not w.alive

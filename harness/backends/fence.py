"""Game-day rails for clusters that belong to someone else (the existing/EKS backend).

A chaos game day runs against a live environment, so every injection goes
through one fence (`ExistingBackend._fence`) built from the pieces here:

- **Allow-list** (`AllowList`): destructive faults only on a context named by
  `--allow-context`, by `EH_ALLOW_CONTEXTS`, or in an allow-list file
  (`--allow-file`, `EH_ALLOW_FILE`, default
  `$XDG_CONFIG_HOME/edge-harness/allowed-contexts`), which the team keeps
  outside the repository so a typo on the command line cannot aim at prod.
  A file line may also cap the blast radius for that context
  (`gameday max-share=0.5`).
- **Dry run by default** (`EH_EXECUTE`): a destructive primitive only acts
  when the run was started with `--execute`; otherwise the fence describes
  exactly what it would do (nodes, pods, for how long) and injects nothing.
- **Blast radius** (`BlastRadius`, `violations`): at most a set share of a
  zone's nodes or pods down *at once* (faults already in effect count: a
  cordoned node, a pod that is not serving), and never the last serving
  Region replica of a Region-only service (postgres), whatever the share.
- **Ledger** (`FaultLedger`): every fault the harness injects is written down
  (under a file lock, before it acts) with what exactly it changed, so an undo
  only undoes what the harness did (a node an operator cordoned stays
  cordoned), and another process can roll back at once what a crashed or
  hung chaos process left (`harness chaos --abort`).
- **Kill switch** (`kill_switch_paths`, `KillSwitchWatcher`): a file
  (`RUN_DIR/ABORT`, written by `harness chaos --abort RUN_DIR`, or any path in
  `EH_KILL_SWITCH`); while it exists nothing is injected, and a chaos process
  that sees it appear rolls back everything in the ledger and stops.

The module reads the cluster through `KubeCluster` only and knows nothing of
experiments: `harness.gameday` maps an experiment's actions onto
`FaultTargets` for the printed plan.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.backends.kube import LABEL_APP, LABEL_POD_ZONE, KubeCluster, pod_serving
from harness.backends.kube.chaos import control_plane_of
from harness.contract.files import write_atomic
from harness.errors import InputError

ALLOW_ENV = "EH_ALLOW_CONTEXTS"
ALLOW_FILE_ENV = "EH_ALLOW_FILE"
EXECUTE_ENV = "EH_EXECUTE"
MAX_SHARE_ENV = "EH_MAX_SHARE"
KILL_SWITCH_ENV = "EH_KILL_SWITCH"
RUN_DIR_ENV = "EH_RUN_DIR"
ABORT_FILE = "ABORT"
KILL_SWITCH_POLL_S = 0.1
_CONTEXT_RE = re.compile(r"[A-Za-z0-9@._:/+=-]+")


def default_allow_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edge-harness" / "allowed-contexts"


def parse_share(value: str, source: str, field_: str = "") -> float:
    """A share of a zone in (0, 1]; InputError naming where it came from otherwise."""
    try:
        share = float(value)
    except ValueError:
        raise InputError(source, field_, f"expected a share between 0 and 1 (e.g. 0.5), got {value!r}") from None
    if not 0.0 < share <= 1.0:  # also refuses nan
        raise InputError(source, field_, f"expected a share between 0 and 1 (e.g. 0.5), got {value!r}")
    return share


@dataclass(frozen=True)
class AllowEntry:
    context: str
    source: str  # "--allow-context", "EH_ALLOW_CONTEXTS" or "FILE:line N"
    max_share: float | None = None


def load_allow_file(path: Path) -> list[AllowEntry]:
    """Parse an allow-list file: one context per line, `#` comments, optional `max-share=S` after it.

    Bad content is an InputError `FILE: line N: message` (the fence must never
    guess what a garbled line meant).
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(str(path), "", "no such allow-list file") from None
    except IsADirectoryError:
        raise InputError(str(path), "", "is a directory, expected an allow-list file") from None
    except OSError as exc:
        raise InputError(str(path), "", f"cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(str(path), "", "not a UTF-8 text file") from None
    out: list[AllowEntry] = []
    seen: set[str] = set()
    for n, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        where = f"line {n}"
        ctx, options = words[0], words[1:]
        if not _CONTEXT_RE.fullmatch(ctx):
            raise InputError(str(path), where, f"not a kubeconfig context name: {ctx!r}")
        if ctx in seen:
            raise InputError(str(path), where, f"context {ctx!r} is listed twice")
        seen.add(ctx)
        share: float | None = None
        for opt in options:
            key, sep, value = opt.partition("=")
            if key != "max-share" or not sep:
                raise InputError(str(path), where, f"unknown option {opt!r} (only max-share=S)")
            share = parse_share(value, str(path), where)
        out.append(AllowEntry(ctx, f"{path}:{where}", share))
    return out


@dataclass(frozen=True)
class AllowList:
    """Contexts destructive chaos may hit, and where each was allowed (for the plan and the refusal)."""

    entries: tuple[AllowEntry, ...] = ()

    @classmethod
    def gather(cls, flags: Iterable[str] = (), env: str | None = None, file: Path | str | None = None) -> AllowList:
        """From the flags, `EH_ALLOW_CONTEXTS` and an allow-list file.

        The file is `file` if given, else `EH_ALLOW_FILE`, else the default
        path; a file named explicitly must exist, the default one may not.
        """
        entries = [AllowEntry(c, "--allow-context") for c in flags if c]
        entries += [AllowEntry(c.strip(), ALLOW_ENV) for c in (env or "").split(",") if c.strip()]
        path = Path(file) if file else (Path(os.environ[ALLOW_FILE_ENV]) if os.environ.get(ALLOW_FILE_ENV) else None)
        if path is not None:
            entries += load_allow_file(path)
        elif default_allow_file().is_file():
            entries += load_allow_file(default_allow_file())
        return cls(tuple(entries))

    @property
    def contexts(self) -> list[str]:
        return sorted({e.context for e in self.entries})

    def allows(self, context: str) -> bool:
        return any(e.context == context for e in self.entries)

    def max_share(self, context: str) -> float | None:
        shares = [e.max_share for e in self.entries if e.context == context and e.max_share is not None]
        return min(shares) if shares else None

    def sources(self, context: str) -> list[str]:
        return [e.source for e in self.entries if e.context == context]


@dataclass(frozen=True)
class BlastRadius:
    """How much of a zone may be down at once; the last Region replica of a Region-only service never."""

    max_share: float = 1.0
    keep_last_region_replica: bool = True

    def describe(self) -> str:
        return f"at most {self.max_share:.0%} of a zone's nodes or pods at once, never the last Region replica"


# -- what the cluster looks like now -------------------------------------------------------------
@dataclass(frozen=True)
class PodView:
    namespace: str
    name: str
    node: str
    app: str  # the app label ("" for pods of other workloads without one)
    pod_zone: str  # the harness's zone label ("" for pods not rendered by the harness)
    serving: bool
    daemon: bool  # DaemonSet or mirror pod: a node kill leaves it, as `kubectl drain` does

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def ours(self) -> bool:
        return bool(self.pod_zone)


@dataclass(frozen=True)
class NodeView:
    name: str
    zone: str
    cordoned: bool


@dataclass
class ClusterView:
    """One consistent read of nodes and pods, which every fence decision is made from."""

    nodes: list[NodeView]
    pods: list[PodView]
    control_plane: dict[str, list[str]] = field(default_factory=dict)  # node -> Consul control-plane pods on it

    @classmethod
    def read(cls, cluster: KubeCluster) -> ClusterView:
        nodes = [NodeView(n.name, n.zone, n.unschedulable) for n in cluster.node_infos()]
        pods = []
        listed = cluster.pods()
        for p in listed:
            meta = p.get("metadata") or {}
            labels = meta.get("labels") or {}
            owners = meta.get("ownerReferences") or []
            daemon = any(o.get("kind") == "DaemonSet" for o in owners) or (
                "kubernetes.io/config.mirror" in (meta.get("annotations") or {})
            )
            phase = (p.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                continue  # finished pods serve nothing and hold nothing
            pods.append(
                PodView(
                    namespace=str(meta.get("namespace", "")),
                    name=str(meta.get("name", "")),
                    node=str((p.get("spec") or {}).get("nodeName") or ""),
                    app=str(labels.get(LABEL_APP, "")),
                    pod_zone=str(labels.get(LABEL_POD_ZONE, "")),
                    serving=pod_serving(p),
                    daemon=daemon,
                )
            )
        return cls(nodes, pods, control_plane_of(listed))

    def zone_nodes(self, zone: str) -> list[NodeView]:
        return [n for n in self.nodes if n.zone == zone]

    def node_zone(self, node: str) -> str:
        return next((n.zone for n in self.nodes if n.name == node), "")

    def zone_pods(self, zone: str) -> list[PodView]:
        """Pods that count for a zone's share: running on one of its nodes (any namespace), daemons excluded."""
        names = {n.name for n in self.zone_nodes(zone)}
        return [p for p in self.pods if p.node in names and not p.daemon]


@dataclass
class FaultTargets:
    """What one primitive would take down, resolved against a `ClusterView`."""

    primitive: str
    zone: str
    nodes: list[str] = field(default_factory=list)  # nodes it cordons
    pods: list[PodView] = field(default_factory=list)  # pods it takes out of service
    namespace: str | None = None  # partition: the namespace it cuts off

    def describe(self) -> str:
        """One line: what exactly happens (the plan's text)."""
        ours = [p.key for p in self.pods if p.ours]
        others = [p.key for p in self.pods if not p.ours]
        parts = []
        if self.nodes:
            parts.append(f"cordon {', '.join(self.nodes)}")
        verb = {
            "kill_pod": "delete",
            "set_pod_unready": "take out of service",
            "partition_zone": "cut off from the Region",
        }.get(self.primitive, "delete")
        if ours:
            parts.append(f"{verb} {len(ours)} pod(s) of the run: {', '.join(ours)}")
        if others:
            parts.append(f"{verb} {len(others)} pod(s) of other workloads: {', '.join(others)}")
        if self.namespace and self.primitive == "partition_zone":
            parts.append(f"NetworkPolicy in namespace {self.namespace}")
        return "; ".join(parts) or "nothing (no matching pods or nodes)"


def targets_for(
    view: ClusterView,
    primitive: str,
    zone: str,
    *,
    service: str | None = None,
    node: str | None = None,
    namespace: str | None = None,
) -> FaultTargets:
    """Resolve a primitive the way the existing backend carries it out (kube.KubeCluster's calls)."""
    t = FaultTargets(primitive, zone, namespace=namespace)
    if primitive in ("kill_pod", "set_pod_unready"):
        t.pods = [p for p in view.pods if p.pod_zone == zone and p.app == service]
    elif primitive == "kill_node":
        t.nodes = [node] if node else []
        t.pods = [p for p in view.pods if p.node == node and not p.daemon]
    elif primitive == "zone_outage":
        t.nodes = [n.name for n in view.zone_nodes(zone)]
        t.pods = view.zone_pods(zone)
    elif primitive == "partition_zone":
        t.pods = [p for p in view.pods if p.namespace == namespace and p.ours]
    return t


def violations(
    view: ClusterView,
    targets: FaultTargets,
    limits: BlastRadius,
    region_only: Mapping[str, Sequence[str]],
) -> list[str]:
    """Why `targets`, on top of what is already down in `view`, exceeds `limits` (empty: within them).

    `region_only` maps each Region-only service to the Region's zones. "Down"
    already: a cordoned node; a pod that is not serving (unready, terminating,
    on a lost node). A node kill takes the node and its pods; a pod kill or an
    unready takes pods only.
    """
    out: list[str] = []
    taken_pods = {p.key for p in targets.pods}
    taken_nodes = set(targets.nodes)
    zones = {targets.zone} | {view.node_zone(n) for n in taken_nodes}
    zones |= {view.node_zone(p.node) for p in targets.pods if p.node}
    for zone in sorted(z for z in zones if z):
        nodes = view.zone_nodes(zone)
        if nodes:
            down = {n.name for n in nodes if n.cordoned} | (taken_nodes & {n.name for n in nodes})
            share = len(down) / len(nodes)
            if share > limits.max_share + 1e-9:
                out.append(
                    f"zone {zone}: {len(down)} of {len(nodes)} nodes down at once ({share:.0%}), "
                    f"the limit is {limits.max_share:.0%}"
                )
        pods = view.zone_pods(zone)
        if pods:
            down_pods = {p.key for p in pods if not p.serving or p.node in taken_nodes} | (
                taken_pods & {p.key for p in pods}
            )
            share = len(down_pods) / len(pods)
            if share > limits.max_share + 1e-9:
                out.append(
                    f"zone {zone}: {len(down_pods)} of {len(pods)} pods down at once ({share:.0%}), "
                    f"the limit is {limits.max_share:.0%}"
                )
    if limits.keep_last_region_replica:
        for service, region_zones in sorted(region_only.items()):
            region_nodes = {n.name for n in view.nodes if n.zone in set(region_zones)}
            replicas = [p for p in view.pods if p.ours and p.app == service and p.node in region_nodes]
            serving = [p for p in replicas if p.serving]
            left = [p for p in serving if p.key not in taken_pods and p.node not in taken_nodes]
            if serving and not left:
                out.append(
                    f"{service} is Region-only and this would take its last serving Region replica "
                    f"({', '.join(p.key for p in serving)})"
                )
    return out


# -- the ledger of faults in effect ------------------------------------------------------------
class FaultLedger:
    """Faults the harness injected and has not undone yet, in a JSON file shared by every process.

    Written under an exclusive `flock` (the chaos process, `--abort` and `down`
    may touch it at once) and replaced atomically, so a crash never leaves half
    a ledger. An entry is written *before* the primitive acts: a process killed
    in between leaves an entry whose undo is harmless.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[dict[str, Any]]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            entries = self._read()
            before = json.dumps(entries, sort_keys=True)
            yield entries
            if json.dumps(entries, sort_keys=True) != before:
                write_atomic(self.path, json.dumps(entries, indent=2) + "\n")
        finally:
            os.close(fd)

    def _read(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []

    def entries(self) -> list[dict[str, Any]]:
        with self._locked() as entries:
            return [dict(e) for e in entries]

    def add(self, **entry: Any) -> str:
        fid = uuid.uuid4().hex[:8]
        rec = {"id": fid, "ts": time.time(), "pid": os.getpid(), "run_dir": os.environ.get(RUN_DIR_ENV), **entry}
        with self._locked() as entries:
            entries.append(rec)
        return fid

    def take(self, match: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """Remove and return the entries `match` selects."""
        with self._locked() as entries:
            taken = [e for e in entries if match(e)]
            entries[:] = [e for e in entries if not match(e)]
        return taken

    def update(self, fn: Callable[[list[dict[str, Any]]], None]) -> None:
        with self._locked() as entries:
            fn(entries)


# -- the kill switch ------------------------------------------------------------------------------
def kill_switch_paths(run_dir: Path | str | None = None) -> list[Path]:
    """Files whose existence stops chaos: `RUN_DIR/ABORT` (of this run) and `$EH_KILL_SWITCH`."""
    paths = []
    rd = run_dir if run_dir is not None else os.environ.get(RUN_DIR_ENV)
    if rd:
        paths.append(Path(rd) / ABORT_FILE)
    if os.environ.get(KILL_SWITCH_ENV):
        paths.append(Path(os.environ[KILL_SWITCH_ENV]))
    return paths


def engaged_switch(paths: Sequence[Path]) -> Path | None:
    return next((p for p in paths if p.exists()), None)


class KillSwitchWatcher:
    """Polls the kill-switch files from a daemon thread; calls `on_trigger(path)` once when one appears."""

    def __init__(self, paths: Sequence[Path], on_trigger: Callable[[Path], None]) -> None:
        self.paths = list(paths)
        self.on_trigger = on_trigger
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="eh-kill-switch", daemon=True)

    def start(self) -> KillSwitchWatcher:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(KILL_SWITCH_POLL_S):
            hit = engaged_switch(self.paths)
            if hit is not None:
                self.on_trigger(hit)
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


def engage(path: Path, reason: str) -> None:
    """Turn the kill switch on (idempotent): the file says who and why."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"ts": time.time(), "pid": os.getpid(), "reason": reason}) + "\n")


def as_dict(t: FaultTargets) -> dict[str, Any]:
    return {**asdict(t), "pods": [p.key for p in t.pods]}

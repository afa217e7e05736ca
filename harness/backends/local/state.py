"""What the local backend created, on disk, so it can always be removed.

The local backend creates kernel objects (network namespaces, an nftables
table) and processes that outlive the harness process if it crashes: `ip netns
del` does not even stop the processes inside a namespace. So every creation is
recorded in a small JSON file *before or right after* it happens (written
atomically: a crash never leaves half a file), and `cleanup(path)` removes
everything listed, idempotently, from any later process.

Processes are recorded with their kernel start time (`/proc/<pid>/stat` field
22): a PID can be recycled by an unrelated process after ours died, and the
start time is what tells them apart. We never signal a PID whose start time
does not match.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.backends.local.network import netns as nsutil
from harness.contract.files import write_atomic

KIND = "edge-harness-local-state"
VERSION = 1


@dataclass(frozen=True)
class ProcessRecord:
    """A process we started: pid plus what identifies it beyond the pid."""

    pid: int
    starttime: int  # clock ticks since boot (/proc/<pid>/stat field 22)
    cmdline: str
    label: str = ""


def proc_starttime(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot, or None if it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm (field 2) is in parentheses and may hold spaces: split after the last ')'
    rest = raw[raw.rfind(")") + 2 :].split()
    # rest[0] is field 3 (state); field 22 is rest[19]
    return int(rest[19])


def proc_is_zombie(pid: int) -> bool:
    """True once `pid` has exited: every thread of it gone, its exit status waiting to be reaped (or gone too).

    The leader's own state is not enough. A SIGKILLed multi-threaded process
    (the uvloop link relay, Envoy) shows `Z` for its leader while its other
    threads are still exiting, and `waitpid` does not report it until the last
    one is gone: taken for exited there, a caller's `Popen.poll()` still says
    running (in 153 of 200 trials on a 2-core box).
    """
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    if raw[raw.rfind(")") + 2 :].split()[0] not in ("Z", "X"):
        return False
    try:
        return len(os.listdir(f"/proc/{pid}/task")) <= 1
    except (FileNotFoundError, ProcessLookupError):
        return True


def proc_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def record_process(pid: int, label: str = "") -> ProcessRecord:
    """Identify a live process now (call right after starting it)."""
    start = proc_starttime(pid)
    if start is None:
        # already gone: record something that can never match a future process
        return ProcessRecord(pid=pid, starttime=-1, cmdline="", label=label)
    return ProcessRecord(pid=pid, starttime=start, cmdline=proc_cmdline(pid), label=label)


def process_alive(rec: ProcessRecord) -> bool:
    """True if `rec.pid` is still *the same* process and has not exited."""
    return proc_starttime(rec.pid) == rec.starttime and not proc_is_zombie(rec.pid)


def _kill_strays(namespaces: Iterable[str], grace_s: float) -> list[ProcessRecord]:
    """End every process still inside `namespaces` (one nobody recorded: a crash between spawn and save)."""
    stray: list[ProcessRecord] = []
    for ns in namespaces:
        for pid in nsutil.ns_pids(ns):
            if pid != os.getpid():
                rec = record_process(pid, f"in {ns}")
                if rec.starttime >= 0:
                    stray.append(rec)
    terminate(stray, grace_s)
    return stray


def terminate(records: list[ProcessRecord], grace_s: float = 3.0) -> None:
    """SIGTERM every still-matching process, then SIGKILL those left after `grace_s`.

    A zombie counts as gone: exit statuses are left for whoever owns the
    `Popen` (reaping here would make its `returncode` lie).
    """
    live = [r for r in records if process_alive(r)]
    for r in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(r.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while live and time.monotonic() < deadline:
        live = [r for r in live if process_alive(r)]
        if live:
            time.sleep(0.05)
    for r in live:
        # re-check identity right before the hard kill: never SIGKILL a recycled pid
        if process_alive(r):
            with contextlib.suppress(ProcessLookupError):
                os.kill(r.pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while live and time.monotonic() < deadline:
        live = [r for r in live if process_alive(r)]
        if live:
            time.sleep(0.02)


@dataclass
class _Data:
    cluster: str = ""
    created: float = field(default_factory=time.time)
    netns: list[str] = field(default_factory=list)  # in creation order (hub first)
    nft: list[dict[str, str]] = field(default_factory=list)  # {"netns", "family", "table"}
    processes: list[ProcessRecord] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


class State:
    """The state file of one local cluster; every mutation is persisted at once.

    Thread-safe (pods are started from several threads). Opening an existing
    file loads it, so a new harness process can keep adding to, or clean up, a
    cluster an earlier one created.
    """

    def __init__(self, path: str | Path, cluster: str = "") -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._data = _load(self.path) if self.path.exists() else _Data(cluster=cluster)
        if cluster and not self._data.cluster:
            self._data.cluster = cluster
        self._save()

    # -- read ---------------------------------------------------------------
    @property
    def cluster(self) -> str:
        return self._data.cluster

    @property
    def netns(self) -> list[str]:
        with self._lock:
            return list(self._data.netns)

    @property
    def processes(self) -> list[ProcessRecord]:
        with self._lock:
            return list(self._data.processes)

    @property
    def dirs(self) -> list[Path]:
        with self._lock:
            return [Path(d) for d in self._data.dirs]

    @property
    def nft_tables(self) -> list[dict[str, str]]:
        with self._lock:
            return [dict(t) for t in self._data.nft]

    def get_meta(self, key: str, default: Any = None) -> Any:
        with self._lock:
            return self._data.meta.get(key, default)

    # -- record -------------------------------------------------------------
    def add_netns(self, name: str) -> None:
        """Record *before* `ip netns add`, so a crash in between still cleans up."""
        with self._lock:
            if name not in self._data.netns:
                self._data.netns.append(name)
                self._save()

    def discard_netns(self, name: str) -> None:
        with self._lock:
            if name in self._data.netns:
                self._data.netns.remove(name)
                self._save()

    def add_nft_table(self, ns: str, family: str, table: str) -> None:
        with self._lock:
            entry = {"netns": ns, "family": family, "table": table}
            if entry not in self._data.nft:
                self._data.nft.append(entry)
                self._save()

    def discard_nft_table(self, ns: str, family: str, table: str) -> None:
        with self._lock:
            entry = {"netns": ns, "family": family, "table": table}
            if entry in self._data.nft:
                self._data.nft.remove(entry)
                self._save()

    def add_process(self, pid: int, label: str = "") -> ProcessRecord:
        """Record a process we just started (reads its start time now)."""
        rec = record_process(pid, label)
        with self._lock:
            self._data.processes = [p for p in self._data.processes if p.pid != pid]
            self._data.processes.append(rec)
            self._save()
        return rec

    def discard_process(self, pid: int) -> None:
        with self._lock:
            before = len(self._data.processes)
            self._data.processes = [p for p in self._data.processes if p.pid != pid]
            if len(self._data.processes) != before:
                self._save()

    def add_pid(self, pid: int, label: str = "") -> ProcessRecord:
        """Alias of `add_process`."""
        return self.add_process(pid, label)

    def remove_pid(self, pid: int) -> None:
        """Alias of `discard_process`."""
        self.discard_process(pid)

    def add_dir(self, path: str | Path) -> None:
        """A directory to delete on cleanup (only directories we created ourselves)."""
        with self._lock:
            p = str(Path(path).resolve())
            if p not in self._data.dirs:
                self._data.dirs.append(p)
                self._save()

    def discard_dir(self, path: str | Path) -> None:
        with self._lock:
            p = str(Path(path).resolve())
            if p in self._data.dirs:
                self._data.dirs.remove(p)
                self._save()

    def set_meta(self, key: str, value: Any) -> None:
        """Free-form JSON-able data for the backend (e.g. where its run directory is)."""
        with self._lock:
            self._data.meta[key] = value
            self._save()

    def _save(self) -> None:
        """Write the whole state atomically (temporary file + rename).

        Called for every process, namespace and table the cluster creates,
        under the lock every pod-creating thread shares, so it must be cheap:
        `up` spent ~40% of its pod-creation time here when each save ran the
        pure-Python JSON encoder (`indent`) and an fsync, and the cost grew
        with the number of records (a profile of 43 pods). The rename keeps a
        crashed daemon's file whole, which is what `cleanup` needs; an fsync
        would only protect against a machine crash, and that takes the
        namespaces, processes and nftables tables this file lists with it.
        """
        with self._lock:
            doc = {"kind": KIND, "version": VERSION, **asdict(self._data)}
            data = json.dumps(doc, separators=(",", ":")).encode()  # the C encoder
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, data)


def _load(path: Path) -> _Data:
    doc = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise ValueError(f"{path}: not a local-backend state file")
    return _Data(
        cluster=doc.get("cluster", ""),
        created=doc.get("created", 0.0),
        netns=list(doc.get("netns", [])),
        nft=[dict(t) for t in doc.get("nft", [])],
        processes=[ProcessRecord(**p) for p in doc.get("processes", [])],
        dirs=list(doc.get("dirs", [])),
        meta=dict(doc.get("meta", {})),
    )


def is_state_file(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(256)
        # cheap pre-check, so scanning a run directory never parses big JSON files
        if KIND.encode() not in head:
            return False
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("kind") == KIND


def find_states(root: str | Path) -> list[Path]:
    """State files of clusters left under `root` (searched recursively)."""
    r = Path(root)
    if not r.exists():
        return []
    return sorted(p for p in r.rglob("*.json") if p.is_file() and is_state_file(p))


@dataclass
class CleanupReport:
    killed: list[int] = field(default_factory=list)
    netns_deleted: list[str] = field(default_factory=list)
    dirs_deleted: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    nft_deleted: list[str] = field(default_factory=list)
    state_file: bool = False  # a state file was found (and removed when nothing failed)

    def merge(self, other: CleanupReport) -> None:
        self.killed += other.killed
        self.netns_deleted += other.netns_deleted
        self.dirs_deleted += other.dirs_deleted
        self.errors += other.errors
        self.nft_deleted += other.nft_deleted
        self.state_file = self.state_file or other.state_file

    def summary(self, daemons: int = 0) -> str:
        """What was removed, in a few words ("" when nothing was): for the one line `up` prints."""
        parts = []
        if daemons:
            parts.append(f"{daemons} daemon")
        if self.killed:
            parts.append(f"{len(self.killed)} process{'es' if len(self.killed) != 1 else ''}")
        if self.netns_deleted:
            parts.append(f"{len(self.netns_deleted)} network namespace{'s' if len(self.netns_deleted) != 1 else ''}")
        if self.nft_deleted:
            parts.append(f"nft table{'s' if len(self.nft_deleted) != 1 else ''} {', '.join(self.nft_deleted)}")
        if self.dirs_deleted:
            parts.append(f"{len(self.dirs_deleted)} director{'ies' if len(self.dirs_deleted) != 1 else 'y'}")
        if self.state_file and not parts:
            parts.append("a state file")
        return ", ".join(parts)


def cleanup(path: str | Path, grace_s: float = 3.0) -> CleanupReport:
    """Remove everything the state file at `path` records, then the file itself.

    Idempotent and crash-safe: works whether the creating process is alive,
    crashed, or already cleaned up half of it. Order matters: processes first
    (a namespace with a live process in it survives `ip netns del`), then the
    nft tables, then the namespaces (pods before the hub that holds their veth
    peers), then directories. Processes still inside one of *our* namespaces
    that were never recorded (a crash between spawn and record) are ours too,
    and are killed as well. The state file is only removed when nothing failed,
    so a partial cleanup can be retried.
    """
    p = Path(path)
    report = CleanupReport()
    if not p.exists():
        return report
    report.state_file = True
    data = _load(p)
    recorded = [r for r in data.processes if process_alive(r)]
    terminate(recorded, grace_s)
    report.killed.extend(r.pid for r in recorded)

    stray = _kill_strays(data.netns, grace_s)
    report.killed.extend(r.pid for r in stray)

    for t in data.nft:
        if nsutil.ns_exists(t["netns"]):
            nsutil.run(nsutil.exec_argv(t["netns"], ["nft", "delete", "table", t["family"], t["table"]]), check=False)
            report.nft_deleted.append(f"{t['family']} {t['table']}")
    # pods (created later) first, the hub (first recorded) last
    for ns in reversed(data.netns):
        if not nsutil.ns_exists(ns):
            continue
        try:
            nsutil.run(["ip", "netns", "del", ns])
            report.netns_deleted.append(ns)
        except Exception as exc:  # keep going: remove as much as possible
            report.errors.append(str(exc))
    for d in data.dirs:
        if os.path.ismount(d):  # the pods' files in memory (`mount_tmpfs`): a directory of ours, mounted by us
            nsutil.run(["umount", "--lazy", d], check=False)
            if os.path.ismount(d):
                report.errors.append(f"{d}: could not be unmounted")
                continue
        if Path(d).exists():
            shutil.rmtree(d, ignore_errors=True)
            if Path(d).exists():
                report.errors.append(f"{d}: could not be removed")
            else:
                report.dirs_deleted.append(d)
    still = [r.pid for r in recorded + stray if process_alive(r)]
    if still:
        report.errors.append(f"processes still running: {still}")
    if not report.errors:
        p.unlink(missing_ok=True)
    return report


def mount_tmpfs(state: State, directory: Path, name: str) -> str | None:
    """Mount a tmpfs on `directory` (recorded first with `State.add_dir`, so `cleanup` unmounts and removes it).

    Why: every pod's writable files (postgres's data directory above all:
    1,300 files copied from the seeded template, and as many again for the
    replica's base backup) were created on the state directory's disk. On an
    ext4 without a journal (CI sandboxes, this one among them) each new inode
    is searched past the inodes deleted in the last minute, so a cluster
    brought up after another came down spent ~2 s of its 2 cores' start-up in
    the kernel doing that, more with every run back to back (`up` 6.4, 7.3,
    7.9 s), on postgres's start that every product-api waits for. A pod's
    files die with it, as a container's writable layer does: memory is where
    they belong here. Returns why not, when the mount failed (the files then
    stay on disk: slower, the same cluster).
    """
    state.add_dir(directory)
    if os.path.ismount(directory):
        return None
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "mode=0755", name, str(directory)], capture_output=True, text=True, check=False
    )
    return None if r.returncode == 0 else (r.stderr or r.stdout).strip() or f"mount exited {r.returncode}"


def cluster_netns(cluster: str) -> list[str]:
    """Network namespaces named like this cluster's (`<cluster>-hub`, `<cluster>-p<N>`): pods first, hub last."""
    import re

    names = nsutil.list_netns()
    pods = sorted(
        (n for n in names if re.fullmatch(rf"{re.escape(cluster)}-p\d+", n)), key=lambda n: int(n.rsplit("p", 1)[1])
    )
    return pods + [n for n in names if n == f"{cluster}-hub"]


def cluster_tempdirs(cluster: str) -> list[Path]:
    """Temporary directories the cluster's network made (`net.Network`: eh-<cluster>-net-*)."""
    import tempfile

    return sorted(Path(tempfile.gettempdir()).glob(f"eh-{cluster}-net-*"))


def sweep(cluster: str, path: str | Path, grace_s: float = 3.0) -> CleanupReport:
    """`cleanup(path)`, then whatever is named like `cluster`'s but no state file records any more.

    A state file can be lost (its directory removed by hand, a crash before
    the first write reached the disk); the names are the cluster's own
    (`<cluster>-hub`, `<cluster>-p<N>`, `eh-<cluster>-net-*`), so what carries
    them is this cluster's: the processes inside those namespaces are stopped,
    the namespaces (and the nft table inside the hub) deleted, the directories
    removed. Call it only when no daemon of the cluster runs.
    """
    try:
        report = cleanup(path, grace_s)
    except ValueError:  # not a state file (or not JSON): what it named is found by name below
        report = CleanupReport(state_file=True)
        Path(path).unlink(missing_ok=True)
    if report.errors:
        return report
    names = cluster_netns(cluster)
    stray = _kill_strays(names, grace_s)
    report.killed.extend(r.pid for r in stray)
    for ns in names:
        if not nsutil.ns_exists(ns):
            continue
        listed = ns == f"{cluster}-hub" and nsutil.run(
            nsutil.exec_argv(ns, ["nft", "list", "table", "inet", cluster]), check=False
        )
        if listed:
            nsutil.run(nsutil.exec_argv(ns, ["nft", "delete", "table", "inet", cluster]), check=False)
            report.nft_deleted.append(f"inet {cluster}")
        try:
            nsutil.run(["ip", "netns", "del", ns])
            report.netns_deleted.append(ns)
        except Exception as exc:  # keep going: remove as much as possible
            report.errors.append(str(exc))
    for d in cluster_tempdirs(cluster):
        shutil.rmtree(d, ignore_errors=True)
        if d.exists():
            report.errors.append(f"{d}: could not be removed")
        else:
            report.dirs_deleted.append(str(d))
    still = [r.pid for r in stray if process_alive(r)]
    if still:
        report.errors.append(f"processes still running: {still}")
    return report

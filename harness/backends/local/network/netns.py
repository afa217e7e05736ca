"""Thin wrappers around network namespaces for the local backend.

Everything the local backend builds lives inside namespaces it creates itself;
the harness process stays in the host namespace. Two needs follow from that:

* run `ip` / `nft` commands and turn their failures into `BackendError` with the
  command's own stderr (the only useful diagnostic when a kernel feature is
  missing);
* open sockets *inside* a namespace (to reach pod IPs that only exist there)
  without moving the whole process. Python 3.11 has no `os.setns`, so a helper
  thread calls setns(2) through ctypes: namespaces are per thread, and a socket
  keeps the namespace it was created in for its whole life, so the socket can
  then be used from any thread (asyncio loops included) in the host namespace.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from harness.errors import BackendError

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000

T = TypeVar("T")

_libc: ctypes.CDLL | None = None


def _get_libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc


def run(argv: Sequence[str], check: bool = True, input: str | None = None, timeout: float = 30.0) -> str:
    """Run a command and return its stdout.

    With `check`, a non-zero exit raises `BackendError` carrying the command and
    its stderr, so a failure names the exact kernel/tool complaint.
    """
    try:
        proc = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise BackendError(f"{argv[0]}: not installed ({exc})") from None
    except subprocess.TimeoutExpired:
        raise BackendError(f"{' '.join(argv)}: timed out after {timeout:.0f}s") from None
    if check and proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip()
        raise BackendError(f"{' '.join(argv)}: exit {proc.returncode}: {err}")
    return proc.stdout


def tools_missing() -> list[str]:
    """Which of the external tools the local network needs are not on PATH."""
    return [t for t in ("ip", "nft") if shutil.which(t) is None]


def ns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def list_netns() -> list[str]:
    """Names of all named network namespaces (`ip netns list`)."""
    out = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def exec_argv(ns: str, argv: Sequence[str]) -> list[str]:
    """`argv` run inside namespace `ns`.

    `ip netns exec` execs the command after setns, so the pid of the started
    process is the command's own pid (what the state file must record).
    """
    return ["ip", "netns", "exec", ns, *argv]


def ns_pids(ns: str) -> list[int]:
    """Processes whose network namespace is `ns` (empty if the namespace is gone)."""
    if not ns_exists(ns):
        return []
    out = run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in out.split() if p.isdigit()]


NsIdent = tuple[int, int]  # a namespace's identity: (device, inode) of its nsfs file


def delete_ns(*names: str) -> list[NsIdent]:
    """Delete the namespaces `names` (one `ip` process for all); return the identities of those that existed.

    Once a name is gone no new process can enter it, so `ns_holders` after
    this call finds everything that still keeps one alive.
    """
    idents, found = [], []
    for ns in names:
        try:
            st = os.stat(NETNS_DIR / ns)  # the bind mount's target: the namespace itself (nsfs)
        except FileNotFoundError:
            continue
        idents.append((st.st_dev, st.st_ino))
        found.append(ns)
    if found:  # -force: go on past a name removed meanwhile
        run(["ip", "-force", "-batch", "-"], input="".join(f"netns del {ns}\n" for ns in found), check=False)
    return idents


def ns_holders(idents: Collection[NsIdent]) -> list[int]:
    """Processes inside one of the namespaces `idents`, and our own children holding one open on their way in.

    `ip netns exec` opens the namespace and then calls setns(2): in between
    it is in no namespace `ip netns pids` reports, and once in it keeps a
    deleted namespace alive with everything it starts. Its descriptor is in
    /proc/<pid>/fd (named by the path it was opened by, so compared by
    identity). Only children of this process count as on their way in: a
    descriptor held anywhere else is not a process we started. One pass over
    /proc serves every namespace: a cluster's teardown removes all of them.
    """
    me = os.getpid()
    wanted = set(idents)
    out: list[int] = []

    def held(path: str) -> bool:
        st = os.stat(path)
        return (st.st_dev, st.st_ino) in wanted

    def ours(pid: str) -> bool:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2 :].split()[1]) == me  # field 4: the parent

    if not wanted:
        return out
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            inside = held(f"/proc/{entry.name}/ns/net")
            if inside or (ours(entry.name) and any(held(fd.path) for fd in os.scandir(f"/proc/{entry.name}/fd"))):
                out.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or a kernel thread
    return out


def _enter(ns: str) -> None:
    """Move the *calling thread* into network namespace `ns`."""
    path = NETNS_DIR / ns
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise BackendError(f"network namespace {ns!r} does not exist") from None
    try:
        if _get_libc().setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise BackendError(f"setns({ns}): {os.strerror(err)}")
    finally:
        os.close(fd)


def call_in(ns: str, fn: Callable[..., T], *args: Any) -> T:
    """Run `fn(*args)` on a short-lived thread that first enters `ns`.

    The thread dies afterwards, so its namespace switch never leaks into any
    thread the rest of the harness uses.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            _enter(ns)
            result.append(fn(*args))
        except BaseException as exc:
            error.append(exc)

    t = threading.Thread(target=target, name=f"netns-{ns}", daemon=True)
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


def socket_in(ns: str, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket created inside namespace `ns`, usable from the calling (host-namespace) thread."""
    return call_in(ns, socket.socket, family, type)


class NetnsExecutor(ThreadPoolExecutor):
    """A thread pool whose threads all live in one network namespace.

    For blocking I/O into pods (health checks, probes): each worker enters the
    namespace once at start instead of paying a thread per call. A failure to
    enter breaks the pool, so submissions then raise instead of silently running
    in the host namespace.
    """

    def __init__(self, ns: str, max_workers: int = 4, thread_name_prefix: str = "") -> None:
        self.ns = ns
        super().__init__(
            max_workers=max_workers,
            thread_name_prefix=thread_name_prefix or f"netns-{ns}",
            initializer=_enter,
            initargs=(ns,),
        )

"""Shared fixtures of the project's own test suite."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from harness.testing.machine import MACHINE_LOCK, acquire_machine_lock

REPO = Path(__file__).resolve().parents[1]
# Package data (pyproject [tool.setuptools.package-data]); fixtures/, experiments/, loadtests/ at the top link here
FIXTURES = REPO / "harness" / "fixtures"
EXPERIMENTS = REPO / "harness" / "experiments"
LOADTESTS = REPO / "harness" / "loadtests"

# Hypothesis profiles. `ci`, the default (`make test`): a bounded, derandomized set of examples, so the
# suite takes the same time and gives the same answer on every run (same config, same verdict).
# `thorough` (`make test-properties`): Hypothesis's own example counts, random. `fuzz` (`make fuzz`):
# the long input fuzz. The random profiles are where new counter-examples are found.
_FUZZ_CHECKS = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large]
settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=_FUZZ_CHECKS
)
settings.register_profile("thorough", deadline=None, suppress_health_check=_FUZZ_CHECKS)
settings.register_profile("fuzz", max_examples=1500, deadline=None, suppress_health_check=_FUZZ_CHECKS)
settings.load_profile("ci")
SHARED_REFERENCE = REPO.parent / "shared" / "reference" / "consul-k8s-v1.9.11"


def local_backend_ready() -> tuple[bool, str]:
    if os.environ.get("EH_NO_LOCAL"):
        return False, "EH_NO_LOCAL is set (the fast lane, make test-fast)"
    if os.geteuid() != 0:
        return False, "needs root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return False, f"needs {tool}"
    return True, ""


LOCAL_LOCK = MACHINE_LOCK
_lock_fd: int | None = None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ok, why = local_backend_ready()
    if ok:
        return
    skip = pytest.mark.skip(reason=f"local backend: {why}")
    for item in items:
        if item.get_closest_marker("local") is not None:
            item.add_marker(skip)


def needs_machine_lock(items: list[pytest.Item]) -> bool:
    """True when a session will run a test marked `local` (see `pytest_collection_finish`)."""
    return any(item.get_closest_marker("local") is not None for item in items)


def pytest_collection_finish(session: pytest.Session) -> None:
    """One session with local-backend tests per machine at a time.

    Local clusters compete for the same two cores and the same timing; two
    suites at once (two checkouts, a bench beside a test run) make each
    other's timing tests fail. So a session that will run `local` tests takes
    an exclusive lock for its whole life and waits for another to finish.
    By the `local` marker, not `item.keywords`: pytest adds a parametrize id as
    a keyword, so a verifier test with the id `local` (a run "as the local
    backend records it") made the other lane's xdist workers take the lock,
    and the second worker of a session waited forever for the first.
    """
    global _lock_fd
    ok, _ = local_backend_ready()
    if not ok or not needs_machine_lock(session.items):
        return
    fd = acquire_machine_lock("another session runs local-backend tests", LOCAL_LOCK)
    _lock_fd = fd
    if any(item.path.name == "test_install.py" for item in session.items):
        from tests.test_install import INSTALL_BUILD, start_install

        session.config.stash[INSTALL_BUILD] = start_install(Path(tempfile.mkdtemp(prefix="eh-install-")))


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop and remove the background install build this session started (also after Ctrl-C)."""
    from tests.test_install import INSTALL_BUILD, stop_install

    build = session.config.stash.get(INSTALL_BUILD, None)
    if build is not None:
        stop_install(build)


def leftovers(prefix: str) -> list[str]:
    """Namespaces and processes of a local cluster that should be gone after `down`."""
    found: list[str] = []
    state_dir = Path(os.environ.get("EH_STATE_ROOT", "/run/edge-harness")) / prefix
    if state_dir.exists():
        found.append(f"state dir {state_dir}")
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    found += [f"netns {n}" for n in ns if n.startswith(prefix + "-")]
    for line in Path("/proc/self/mountinfo").read_text().splitlines():  # the pods' tmpfs (state.mount_tmpfs)
        point = line.split()[4]
        if point == str(state_dir) or point.startswith(f"{state_dir}/"):
            found.append(f"mount {point}")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"/{prefix}/" in cmd and ("envoy" in cmd or "harness.backends.local" in cmd):
            found.append(f"process {proc.name}: {cmd[:120]}")
    return found


def free_ports(n: int, ip: str = "127.0.0.1") -> list[int]:
    """`n` distinct free ports: every socket stays bound until all are chosen (the kernel may hand a
    just-closed port out again, which once gave an app and a listener the same port)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind((ip, 0))
        return [int(s.getsockname()[1]) for s in socks]


def complete_jsonl(path: Path) -> list[Any]:
    """The complete lines of a JSON-lines file another thread or process is appending to, parsed.

    A record file is read while it grows (an inventory watch, a fake tool's call log): the last line may be
    half written at the moment of the read, so only the text up to the last newline is parsed (the harness's
    own readers skip a truncated last line alike). A missing file has no lines.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(x) for x in text[: text.rfind("\n") + 1].splitlines() if x.strip()]


def wait_until(cond: Callable[[], object], timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Poll `cond` until it is true (watches, daemons and threads act asynchronously); its last answer
    once `timeout` passes, so `assert wait_until(...)` fails on the state the test waited for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return bool(cond())

"""The kubelet's container log rotation, as the simulator models it, and the harness's follower across it.

What a real kubelet does (tests/kubesim.py's docstring has the sources): it renames a container log that
reached containerLogMaxSize and the runtime reopens it; the log API reads only the current file, so a read
with sinceTime returns nothing of a rotated one; a kubelet >= 1.29 moves a follow stream to the new file
without reading the old one to its end (kubernetes/kubernetes#115702), an older one leaves it on the renamed
file for good (#115701). A sidecar that logs every request passes 10Mi in minutes, so a run meets rotations.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.backends.kube import KubeCluster, KubeLogSource
from harness.backends.kube.logs import KubeLogSources
from harness.contract.names import DATAPLANE_CONTAINER
from harness.contract.rundir import ACCESS_LOG_FLUSH, LOG_ROTATION, record_problem
from tests.conftest import wait_until
from tests.kubefake import NODES, FakeApiServer, lax_pod
from tests.kubesim import Container, LogFile
from tests.test_verify_soundness import KILL, run
from tests.verdicts import verify

NS = "hashicups-lax-1a"
POD = "pa"
MAX_SIZE = 4000  # bytes: ~18 access-log lines a file


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    with FakeApiServer() as srv:
        srv.sim.call(lambda: setattr(srv.sim, "container_log_max_size", MAX_SIZE))
        yield srv


def _cluster(api: FakeApiServer, tmp_path: Path) -> KubeCluster:
    c = api.cluster(tmp_path)
    api.seed(c, *NODES, lax_pod(POD, "10.244.3.5"))
    return c


def _container(api: FakeApiServer) -> Container:
    pod = api.sim.get("v1", "pods", NS, POD)
    assert pod is not None
    cont = api.sim.pods[str(pod["metadata"]["uid"])].current
    assert cont is not None
    return cont


def _access(i: int) -> str:
    return json.dumps(
        {
            "start_time": "2026-11-25T20:00:00.000Z",
            "response_code": 200,
            "upstream_cluster": "product-api-lax-1a.default.dc1.internal.x.consul",
            "upstream_host": "10.244.3.9:20000",
            "request_id": f"eh-{i:016x}",
            "path": "/coffees",
        }
    )


def _write(api: FakeApiServer, i: int) -> None:
    """The sidecar writes access-log line `i` to its stdout (the runtime stamps it)."""
    cont = _container(api)

    def go() -> None:
        api.sim._write_log(cont, DATAPLANE_CONTAINER, time.time_ns(), _access(i))
        api.sim._notify()

    api.sim.call(go)


def _log_steadily(api: FakeApiServer, n: int, every_s: float = 0.02) -> None:
    for i in range(n):
        _write(api, i)
        time.sleep(every_s)


def _ids(lines: list[str]) -> list[int]:
    return [int(json.loads(x)["request_id"][3:], 16) for x in lines]


def _drain(src: KubeLogSource, want: int, timeout: float = 10.0) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got += list(src.read())
        if len(got) >= want:
            break
        time.sleep(0.05)
    return got


# -- the simulator: what the kubelet keeps and what its API reads ------------------------------------------


def test_the_kubelet_rotates_a_log_at_its_size_and_the_api_reads_only_the_current_file(
    api: FakeApiServer, tmp_path: Path
) -> None:
    c = _cluster(api, tmp_path)
    _log_steadily(api, 120, every_s=0.005)
    cont = _container(api)
    assert wait_until(lambda: cont.logs[DATAPLANE_CONTAINER].size < MAX_SIZE, timeout=5)
    for i in range(120, 123):  # the current file holds a few lines (the last rotation may have left it empty)
        _write(api, i)
    rotated = cont.rotated[DATAPLANE_CONTAINER]
    assert rotated, "120 lines of ~200 bytes are past 4000 bytes: rotated"
    assert len(rotated) == api.sim.container_log_max_files - 1  # the oldest are removed
    current = cont.logs[DATAPLANE_CONTAINER]
    assert isinstance(current, LogFile)
    path = f"/api/v1/namespaces/{NS}/pods/{POD}/log"
    # from the start of the run (sinceTime long before): only the current file's lines
    body = c.request("GET", path, query=[("container", DATAPLANE_CONTAINER), ("sinceTime", "2020-01-01T00:00:00Z")])
    assert isinstance(body, str)
    served = [json.loads(x)["request_id"] for x in body.splitlines()]
    assert served == [json.loads(t)["request_id"] for _n, t in current]
    assert len(body.splitlines()) < 120
    # limitBytes: the file's beginning (what the harness reads to tell one file from the next)
    head = c.request("GET", path, query=[("container", DATAPLANE_CONTAINER), ("limitBytes", "50")])
    assert isinstance(head, str) and len(head.encode()) == 50


def test_a_follow_stream_moves_to_the_new_file_and_skips_what_the_old_one_got_after_it(
    api: FakeApiServer, tmp_path: Path
) -> None:
    """containerd creates the new file before it swaps its writer: the rest of a write in flight lands in the
    old one, after the Create a >= 1.29 kubelet's stream moved on from; those lines reach no reader."""
    c = _cluster(api, tmp_path)
    api.sim.call(lambda: setattr(api.sim, "container_log_max_size", 10**9))  # rotated by hand here
    api.sim.call(lambda: setattr(api.sim, "log_swap_lines", 2))
    src = KubeLogSource(POD, NS, cluster=c, retry_s=0.01, rotation_check_s=0)
    src.start()
    try:
        for i in range(3):
            _write(api, i)
        assert _ids(_drain(src, 3)) == [0, 1, 2]
        cont = _container(api)
        api.sim.call(lambda: api.sim.rotate_log(cont, DATAPLANE_CONTAINER))
        for i in range(3, 8):
            _write(api, i)
        got = _ids(_drain(src, 3, timeout=3))
        assert got == [5, 6, 7]  # 3 and 4 went to the rotated file after the new one existed
        assert [json.loads(t)["request_id"] for _n, t in cont.rotated[DATAPLANE_CONTAINER][-1]][-2:] == [
            "eh-0000000000000003",
            "eh-0000000000000004",
        ]
    finally:
        src.close()


# -- the harness's follower across rotations ------------------------------------------------------------


@pytest.mark.parametrize("follows_rotation", [True, False], ids=["kubelet>=1.29", "kubelet<1.29"])
def test_a_healthy_sidecars_log_is_kept_whole_across_rotations(
    api: FakeApiServer, tmp_path: Path, follows_rotation: bool
) -> None:
    """Every line a sidecar writes reaches the run, whichever kubelet serves its log.

    Before the fix an older kubelet's stream stayed on the renamed file (#115701) and the follower, whose
    stream never ended, took nothing more: every line after the first rotation was missing, later ones only
    at the end-of-run catch-up (the current file's), so the verdict saw the sidecar silent while its callers
    showed it serving, and failed a healthy mesh as unverified.
    """
    c = _cluster(api, tmp_path)
    api.sim.call(lambda: setattr(api.sim, "kubelet_follows_rotation", follows_rotation))
    src = KubeLogSource(POD, NS, cluster=c, retry_s=0.01, rotation_check_s=0.05)
    src.start()
    try:
        assert wait_until(lambda: src.opens >= 1, timeout=5)
        n = 80  # ~4 files' worth, one every ~0.4 s: the check is 8x faster than the rotations, as on a node
        _log_steadily(api, n)
        got = _ids(_drain(src, n))
        assert got == list(range(n))
        assert _container(api).rotated[DATAPLANE_CONTAINER], "the log was rotated meanwhile"
        assert src.rotations, "and the follower saw it"
    finally:
        src.close()


def test_lines_lost_at_a_rotation_lie_where_the_follower_says_it_saw_one(api: FakeApiServer, tmp_path: Path) -> None:
    """What the API never relays cannot be read back (the old file is not served): the follower says when and
    between which lines the file changed, so a gap there is told from the mesh's own."""
    c = _cluster(api, tmp_path)
    api.sim.call(lambda: setattr(api.sim, "container_log_max_size", 10**9))
    api.sim.call(lambda: setattr(api.sim, "log_swap_lines", 2))
    src = KubeLogSource(POD, NS, cluster=c, retry_s=0.01, rotation_check_s=0.05)
    src.start()
    try:
        assert wait_until(lambda: src.opens >= 1, timeout=5)
        for i in range(3):
            _write(api, i)
        assert len(_drain(src, 3)) == 3
        cont = _container(api)
        # the follower has read this file's first line (a file empty at one check and rotated by the next is
        # taken for its first write: on a node that is 10Mi within containerLogMonitorInterval)
        assert wait_until(lambda: src._head is not None and src._head[0] >= 0, timeout=5)

        def rotate_mid_write() -> None:  # the kubelet's rotation lands while the runtime writes a burst
            api.sim.rotate_log(cont, DATAPLANE_CONTAINER)
            for i in range(3, 8):
                api.sim._write_log(cont, DATAPLANE_CONTAINER, time.time_ns(), _access(i))
            api.sim._notify()

        api.sim.call(rotate_mid_write)
        got = _ids(_drain(src, 3, timeout=3))
        assert got == [5, 6, 7]
        assert wait_until(lambda: bool(src.rotations), timeout=5)
        rot = src.rotations[-1]
        lost = [n for n, _t in cont.rotated[DATAPLANE_CONTAINER][-1][-2:]]
        first = cont.logs[DATAPLANE_CONTAINER][0][0]
        assert rot.first_ns == first
        assert all(rot.last_ns < n for n in lost) and all(n < first for n in lost)
    finally:
        src.close()


# -- the rotations on the run's record ---------------------------------------------------------------------


def test_a_rotation_is_said_in_the_records_and_the_verdict_as_a_note(api: FakeApiServer, tmp_path: Path) -> None:
    """The follower's rotations reach `recording.jsonl` (`log rotation`) through `KubeLogSources.rotation_notes`,
    also of a source dropped since (its pod gone), and the verdict says each as a note without failing the run:
    a gap in that sidecar's log is then read beside it. The same line as an access-log flush problem fails
    coverage (the control: a note that could not fail would not be told apart)."""
    c = _cluster(api, tmp_path)
    sources = KubeLogSources(c, retry_s=0.01, rotation_check_s=0.05)
    try:
        (src,) = sources.current()  # as the collector's polls find the sidecar
        assert isinstance(src, KubeLogSource) and src.pod == POD
        assert list(src.read()) == []  # the collector's first read starts it
        assert wait_until(lambda: src.opens >= 1, timeout=5)
        _log_steadily(api, 40)
        _drain(src, 40)
        assert wait_until(lambda: bool(src.rotations), timeout=5)
        assert sources.rotation_notes()[0].startswith(f"{POD}: the kubelet rotated its sidecar's container log")
        # the pod goes (a kill: its replacement has another name); its source finishes once its lines are read,
        # and the next `current()` drops it
        assert c.delete_pod(NS, POD)

        def finished() -> bool:
            list(src.read())
            return src.finished

        assert wait_until(finished, timeout=10)
        notes = [r.describe(POD) for r in src.rotations]
        assert sources.rotation_notes() == notes  # followed still
        assert sources.current() == [] and sources.known() == []  # dropped
        assert sources.rotation_notes() == notes  # and its rotations said all the same
    finally:
        sources.close()

    for what, passes in ((LOG_ROTATION, True), (ACCESS_LOG_FLUSH, False)):
        d = run(tmp_path / what.replace(" ", "-"), faults=[KILL])
        record_problem(d, what, notes[0])
        v = verify(d)
        assert v.passed is passes, (what, v.failure_messages)
        assert any(n.startswith(f"recording: {what}: {POD}: the kubelet rotated") for n in v.run.notes), v.run.notes

"""kubesim's rule that a graceful delete long enough for consul-dataplane's shutdown grace flushes Envoy's
buffered access-log lines, and a shorter one loses them (`DATAPLANE_SHUTDOWN_GRACE_S`), ran in no test: every
harness path deletes with 1 s.

consul-dataplane's graceful shutdown (`pkg/consuldp/lifecycle.go` gracefulShutdown) waits its
`shutdownGracePeriodSeconds` and then quits Envoy (`proxy.Quit`), which writes out its buffered lines as it exits;
the kubelet SIGKILLs a container whose deletion grace runs out first (kuberuntime_container.go killContainer), and
the buffer is lost. A pod deleted with the pod's own grace (no gracePeriodSeconds: terminationGracePeriodSeconds,
30 s by default) is the case users meet: `kubectl delete pod`, a rollout, a drain.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.kubefake import FakeApiServer
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.kubesim import DATAPLANE_SHUTDOWN_GRACE_S, Container
from tests.test_kubesim import _running_pod_listener

pytestmark = pytest.mark.slow  # the simulated cluster runs in real time

LINE = json.dumps({"response_code": 200, "upstream_host": "10.244.1.9:9090", "path": "/buffered"})


def _dataplane_lines(api: FakeApiServer, cont: Container) -> list[str]:
    """What the pod's sidecar container has written to its log (read on the simulation's loop)."""
    return list(api.sim.call(lambda: [text for _ns, text in cont.logs.get("consul-dataplane") or ()]))


@pytest.mark.parametrize(
    ("grace", "flushed"),
    [
        pytest.param(None, True, id="the-pods-own-30s"),
        pytest.param(DATAPLANE_SHUTDOWN_GRACE_S + 15, True, id="45s"),
        pytest.param(DATAPLANE_SHUTDOWN_GRACE_S - 1, False, id="29s"),
        pytest.param(1, False, id="1s-the-harness-kill"),
    ],
)
def test_a_graceful_delete_flushes_envoys_buffer_only_when_the_dataplane_outlives_its_grace(
    api: FakeApiServer, tmp_path: Path, grace: int | None, flushed: bool
) -> None:
    """A line Envoy buffered (its flush timer held far off) reaches the sidecar's log when the pod is deleted
    with at least the dataplane's 30 s grace (the pod's own by default, or more), and never with less: the
    harness's 1 s kill loses what the sidecar had not flushed, which is why the verifier excuses a killed pod's
    unflushed last second and no more."""
    c = api.cluster(tmp_path)
    p, _port = _running_pod_listener(api, c)
    uid, name = str(p["metadata"]["uid"]), str(p["metadata"]["name"])

    def buffer_one() -> Container:
        cont = api.sim.pods[uid].current
        assert cont is not None
        cont.next_flush = math.inf  # no periodic flush: only the shutdown can write it out
        cont.envoy_buffer.append(LINE)
        return cont

    cont = api.sim.call(buffer_one)
    assert LINE not in _dataplane_lines(api, cont)
    query: list[tuple[str, Any]] = [] if grace is None else [("gracePeriodSeconds", str(grace))]
    doc = c.request("DELETE", f"/api/v1/namespaces/n/pods/{name}", query=query)
    assert doc["metadata"]["deletionGracePeriodSeconds"] == (30 if grace is None else grace)
    assert wait_until(lambda: name not in {q["metadata"]["name"] for q in c.pods("n")}, 30)
    assert not cont.alive and (LINE in _dataplane_lines(api, cont)) is flushed

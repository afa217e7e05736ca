"""The kind/EKS API paths against behaviours of a real API server the fake used to leave out (k48c).

Each reproducer makes the simulated cluster (`tests.kubesim`) answer as kube-apiserver does, with the source
named there, and failed on the harness before its fix; each control shows the case the fix must leave alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.backends.kube import LABEL_SERVING, KubeCluster
from harness.backends.kube.api import KubeApiError
from tests.kubefake import NODES, FakeApiServer, lax_pod
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest

LAX = "us-west-2-lax-1a"
CLIENT_GO_MAX_RETRIES = 10  # client-go rest/request.go NewRequest `maxRetries: 10`, what kubectl and helm use


def _seeded(api: FakeApiServer, tmp_path: Path) -> KubeCluster:
    c = api.cluster(tmp_path)
    api.seed(c, *NODES, lax_pod("pa-lax-1", "10.244.3.11"), lax_pod("pa-lax-2", "10.244.3.12"))
    return c


# -- a throttled request (API Priority and Fairness: 429 Retry-After) -------------------------------------------


def test_a_pod_unready_rides_out_a_throttled_patch(api: FakeApiServer, tmp_path: Path) -> None:
    """A busy API server (APF, max-in-flight) answers 429 `Retry-After: 1` before doing anything of the request;
    kubectl (client-go) waits and sends it again, whatever the verb. The harness sent a throttled PATCH (the
    unready fault's label, a cordon, an apply's server-side apply) or POST never again (urllib3 retries only
    GET/PUT/DELETE by status): the chaos action failed, and the verdict with it, for a throttled request."""
    c = _seeded(api, tmp_path)
    api.sim.call(lambda: api.sim.throttle(1, methods=["PATCH"]))
    assert sorted(c.set_serving(LAX, "product-api", False)) == ["pa-lax-1", "pa-lax-2"]
    assert api.sim.throttled == ["PATCH /api/v1/namespaces/hashicups-lax-1a/pods/pa-lax-1"]
    assert {p["metadata"]["name"]: p["metadata"]["labels"][LABEL_SERVING] for p in c.pods("hashicups-lax-1a")} == {
        "pa-lax-1": "false",
        "pa-lax-2": "false",
    }


def test_a_pod_kill_rides_out_a_list_throttled_more_than_three_times(api: FakeApiServer, tmp_path: Path) -> None:
    """A GET was sent again by urllib3 alone, 3 times: the fourth 429 in a row failed the pod kill, where
    client-go goes on to 10."""
    c = _seeded(api, tmp_path)
    api.sim.call(lambda: api.sim.throttle(5, retry_after="0"))
    assert sorted(c.kill_pods(LAX, "product-api")) == ["pa-lax-1", "pa-lax-2"]
    assert api.sim.throttled == ["GET /api/v1/pods"] * 5  # the list, answered on its sixth sending
    deletes = sorted(p for m, p, _d in api.writes() if m == "DELETE")
    assert deletes == [f"/api/v1/namespaces/hashicups-lax-1a/pods/pa-lax-{i}" for i in (1, 2)]


def test_control_a_watch_rides_out_a_throttled_start(api: FakeApiServer, tmp_path: Path) -> None:
    """Control: the streaming calls (the inventory's watch, a log follow) meet the same filters: a throttled watch is
    opened again after Retry-After, and its events come."""
    c = _seeded(api, tmp_path)
    api.sim.call(lambda: api.sim.throttle(1))
    stream = c.stream_lines("/api/v1/pods", [("watch", "true"), ("timeoutSeconds", "1")], read_timeout=10)
    try:
        c.delete_pod("hashicups-lax-1a", "pa-lax-1")
        kinds = [json.loads(line)["type"] for line in stream.lines() if line.strip()]
    finally:
        stream.close()
    assert api.sim.throttled == ["GET /api/v1/pods"]
    assert "MODIFIED" in kinds or "DELETED" in kinds, kinds


def test_control_the_retries_end_where_client_gos_do(api: FakeApiServer, tmp_path: Path) -> None:
    """Control: a server that throttles on and on is not waited on forever: the call is sent 1 + 10
    times (client-go's 10 retries) and then fails with the 429, as kubectl's does."""
    c = _seeded(api, tmp_path)
    api.sim.call(lambda: api.sim.throttle(CLIENT_GO_MAX_RETRIES + 5, retry_after="0"))
    with pytest.raises(KubeApiError) as err:
        c.pods("hashicups-lax-1a")
    assert err.value.status == 429
    assert "Too many requests" in str(err.value)
    assert len(api.sim.throttled) == CLIENT_GO_MAX_RETRIES + 1
    assert api.sim.call(lambda: api.sim.throttle_left) == 4


def test_control_an_error_without_retry_after_is_the_answer(api: FakeApiServer, tmp_path: Path) -> None:
    """Control: a 429 or 5xx that does not ask to come back (no usable Retry-After: a webhook's 500, an
    eviction's own refusal) is not sent again; one request, and the error as the server gave it."""
    c = _seeded(api, tmp_path)
    api.sim.call(lambda: api.sim.throttle(3, retry_after=""))
    with pytest.raises(KubeApiError) as err:
        c.pods("hashicups-lax-1a")
    assert err.value.status == 429
    assert api.sim.throttled == ["GET /api/v1/namespaces/hashicups-lax-1a/pods"]

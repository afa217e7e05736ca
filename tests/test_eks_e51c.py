"""EKS first contact (e51c): what the nightly meets on a real EKS cluster with Local Zones, held to how Kubernetes and
AWS behave.

A meshed pod on EKS pulls three images from Docker Hub besides its app's: consul-k8s' init container
(`hashicorp/consul-k8s-control-plane`) first, then the app's and `hashicorp/consul-dataplane`. Docker Hub gives an
unauthenticated client 10 pulls an hour per IPv4 address (docs.docker.com/docker-hub/usage/pulls/, since April
2025), and the nodes of a private subnet share their NAT gateway's address: a new cluster's first nightly pulls
more than that, and the kubelet leaves the pods in ImagePullBackOff with Docker Hub's "toomanyrequests" in its
Warning event.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.backends.existing import ExistingBackend
from harness.backends.kube import KubeCluster
from harness.errors import BackendError
from tests.conftest import wait_until
from tests.kubefake import FakeApiServer, rendered
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.kuberbac import nightly_rules
from tests.kubesim import CHART_K8S_IMAGE
from tests.test_backend_existing import CONTEXT, ENTRY, LAX, NODE, _backend
from tests.test_backend_existing import eks as eks  # the operator's EKS cluster with its Consul, fake kubectl on PATH

pytestmark = pytest.mark.slow

TOO_MANY = (
    'failed to pull and unpack image "docker.io/{image}": failed to copy: httpReadSeeker: failed open: unexpected '
    "status code https://registry-1.docker.io/v2/{repo}/manifests/sha256:0e1f: 429 Too Many Requests - Server "
    "message: toomanyrequests: You have reached your unauthenticated pull rate limit. "
    "https://www.docker.com/increase-rate-limit"
)
"""containerd's error for a pull Docker Hub refused over its rate limit, as the kubelet's Failed event carries it."""


def _rate_limited(api: FakeApiServer, image: str) -> str:
    error = TOO_MANY.format(image=image, repo=image.split(":")[0])
    api.sim.unpullable[image] = error
    return error


def _up_fails(api: FakeApiServer, tmp_path: Path) -> str:
    b = _backend(api, tmp_path)
    b.ready_timeout_s = 6.0
    try:
        with pytest.raises(BackendError) as err:
            b.up(rendered(tmp_path))
    finally:
        b.close()
    text = str(err.value)
    assert "\n" not in text, text
    return text


def test_a_rate_limited_init_container_image_is_named_when_up_gives_up(
    eks: KubeCluster, api: FakeApiServer, tmp_path: Path
) -> None:
    """Reproducer: Docker Hub refuses the meshed pods' init container image (consul-k8s-control-plane). The kubelet
    runs init containers first, so the pods stay Pending with it in ImagePullBackOff and every app container
    waiting "PodInitializing"; the ready wait's error read only the app containers and said "(frontend:
    PodInitializing)", naming neither the image nor Docker Hub's refusal. Now the init container, its image and
    the kubelet's error."""
    error = _rate_limited(api, CHART_K8S_IMAGE)
    text = _up_fails(api, tmp_path)
    assert "not ready after 6s" in text, text
    assert f'(consul-connect-inject-init: ImagePullBackOff: Back-off pulling image "{CHART_K8S_IMAGE}"; the ' \
           f'kubelet: Failed to pull image "{CHART_K8S_IMAGE}": {error})' in text, text  # fmt: skip
    assert "PodInitializing" not in text, text


def test_a_rate_limited_app_image_is_named_with_docker_hubs_refusal(
    eks: KubeCluster, api: FakeApiServer, tmp_path: Path
) -> None:
    """Reproducer: the app's own image refused (the init container pulled). The app container was named with the
    kubelet's waiting message alone, "Back-off pulling image X", which is the same for a tag that does not exist, a
    private registry and Docker Hub's rate limit; the cause is only in the kubelet's Warning event, as helm's wait
    already reads it. Now that event's words too; the Deployments whose images pull are not named."""
    image = "hashicorpdemoapp/public-api:v0.0.7"
    error = _rate_limited(api, image)
    text = _up_fails(api, tmp_path)
    assert f'(public-api: ImagePullBackOff: Back-off pulling image "{image}"; the kubelet: Failed to pull image ' \
           f'"{image}": {error})' in text, text  # fmt: skip
    assert "/frontend" not in text and "consul-connect-inject-init" not in text, text


def test_an_init_container_still_running_is_named_and_a_starting_pod_says_nothing() -> None:
    """Reproducer (unit): a meshed pod whose consul-connect-inject-init runs on (it waits for the pod's service in
    Consul) names that init container and where its log is, not the app's "PodInitializing" (as on HEAD). Controls,
    as on HEAD: a native sidecar (restartPolicy Always) running is no reason; a pod still creating its containers
    adds nothing."""
    from harness.backends.kube.apply import ApplyMixin
    from tests.test_backend_kube import _NotReady

    def pod(init_state: dict[str, Any], *, sidecar: bool = False) -> dict[str, Any]:
        init = {"name": "consul-connect-inject-init", **({"restartPolicy": "Always"} if sidecar else {})}
        return {"metadata": {"name": "public-api-7d9-x2"}, "spec": {"initContainers": [init]},
                "status": {"conditions": [{"type": "PodScheduled", "status": "True"}],
                           "initContainerStatuses": [{"name": "consul-connect-inject-init", "state": init_state}],
                           "containerStatuses": [{"name": "public-api",
                                                  "state": {"waiting": {"reason": "PodInitializing"}}}]}}  # fmt: skip

    why = ApplyMixin._why_not_ready
    running = {"running": {"startedAt": "2026-12-06T19:00:00Z"}}
    assert why(_NotReady([pod(running)]), "ns", "public-api") == (  # type: ignore[arg-type]
        " (init container consul-connect-inject-init has not completed: kubectl logs -n ns public-api-7d9-x2 "
        "-c consul-connect-inject-init)"
    )
    assert why(_NotReady([pod(running, sidecar=True)]), "ns", "public-api") == " (public-api: PodInitializing)"  # type: ignore[arg-type]
    creating = pod({"waiting": {"reason": "ContainerCreating"}})
    creating["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] = "ContainerCreating"
    assert why(_NotReady([creating]), "ns", "public-api") == ""  # type: ignore[arg-type]


def test_a_rate_limited_pull_is_said_while_up_waits_once_per_pod(
    eks: KubeCluster, api: FakeApiServer, tmp_path: Path
) -> None:
    """Reproducer: the ready wait said the scheduler's Unschedulable at once but the kubelet's ImagePullBackOff only
    when it gave up (900 s on EKS), though the kubelet says it within seconds and helm's wait for Consul's pods
    already reads it. Now each stuck container is said once, init containers first, with the runtime's error, and
    the wait goes on (Docker Hub's hourly limit passes)."""
    error = _rate_limited(api, CHART_K8S_IMAGE)
    said: list[str] = []
    b = _backend(api, tmp_path)
    b.ready_timeout_s = 6.0
    try:
        with pytest.raises(BackendError):
            b.up(rendered(tmp_path), progress=said.append)
    finally:
        b.close()
    stuck = [x for x in said if "ImagePullBackOff" in x]
    assert stuck, said
    pods = [x.split(" ", 1)[0] for x in stuck]
    assert len(pods) == len(set(pods)), stuck  # once per pod, not once per poll
    assert all(
        x.endswith(f'the kubelet: Failed to pull image "{CHART_K8S_IMAGE}": {error} (waiting on)') for x in stuck
    )
    assert all(" container consul-connect-inject-init: ImagePullBackOff (its image cannot be pulled): " in x
               for x in stuck), stuck  # fmt: skip
    assert any(x.startswith("hashicups-lax-1a/frontend-lax-1a-") for x in stuck), stuck


def _night(api: FakeApiServer, tmp_path: Path, runner: str) -> tuple[ExistingBackend, list[str]]:
    """One night's `up` on a runner of its own (`runner`: its runs/.backend/), and what it said."""
    api.grant(CONTEXT, nightly_rules())
    kc = api.write_kubeconfig(tmp_path / "kubeconfig", CONTEXT)
    b = ExistingBackend(CONTEXT, kc, (), workdir=tmp_path / runner, entrypoints=[f"{z}={u}" for z, u in ENTRY.items()])
    b.ready_poll_s = 0.1
    said: list[str] = []
    try:
        b.up(rendered(tmp_path), progress=said.append)
    except BaseException:
        b.close()
        raise
    return b, said


def test_the_next_night_names_what_a_lost_runner_left_on_the_cluster(
    eks: KubeCluster, api: FakeApiServer, tmp_path: Path
) -> None:
    """Reproducer: a night whose runner was lost before its clean-up (a GitHub-hosted runner that stopped answering;
    the upload leaves runs/.backend/ out, so its record goes with it) left the shop on the cluster. The next night,
    on a fresh runner, found every object there (409 on create), applied over them as not its own, and its `down`
    left them all, with no word: the shop stayed in the Local Zones for good, every night. Now `up` says which
    Deployments an earlier run left (labelled as the harness's, not in this runner's record) and how to remove them,
    as a WARNING and among the run's warnings (preflight.json, the report's notes)."""
    first, _said = _night(api, tmp_path, "runner-1")
    first.close()  # the runner is gone: no down
    second, said = _night(api, tmp_path, "runner-2")
    try:
        warnings = second.cluster_warnings()
    finally:
        second.down()
    (line,) = [x for x in said if "left by an earlier run" in x]
    assert line.startswith("WARNING: "), line
    assert "(hashicups-las-1a/frontend-las-1a, " in line and " delete namespace hashicups hashicups-las-1a " in line, (
        line
    )
    assert line.removeprefix("WARNING: ") in warnings, warnings
    assert eks.request("GET", "/api/v1/namespaces/hashicups-lax-1a")  # left, as the warning says: not this run's


def test_control_a_re_up_on_the_same_runner_and_a_first_night_say_nothing_of_leftovers(
    eks: KubeCluster, api: FakeApiServer, tmp_path: Path
) -> None:
    """Control: the first night finds nothing of the harness's; a second `up` on the same runner finds its own
    record's objects (the ledger knows them: its `down` deletes them)."""
    first, said = _night(api, tmp_path, "runner-1")
    first.close()
    again, said_again = _night(api, tmp_path, "runner-1")
    try:
        assert not [x for x in [*said, *said_again] if "left by an earlier run" in x]
        assert not [w for w in again.cluster_warnings() if "left by an earlier run" in w]
    finally:
        again.down()


def test_a_node_kill_leaves_a_pod_no_controller_would_bring_back(
    api: FakeApiServer, eks: KubeCluster, tmp_path: Path
) -> None:
    """Reproducer: the node kill (cordon, then delete the node's pods) deleted every pod of the node but DaemonSet and
    mirror pods, a pod no controller owns too (an operator's debug pod, `kubectl run`): nothing re-creates it, so an
    8-second node fault destroyed it for good, where a node back after 8 s loses no pod, and `kubectl drain` refuses
    such a pod without --force ("Pods not managed by ReplicationController, ReplicaSet, Job, DaemonSet or
    StatefulSet ... will be lost forever", kubectl drain's help). Now it stays on the cordoned node, said when the
    fault starts; control: the node's HashiCups pods (ReplicaSet-owned) are deleted as before and come back."""
    b = _backend(api, tmp_path, (CONTEXT,), execute=True)
    said: list[str] = []
    try:
        b.up(rendered(tmp_path))
        node = NODE[LAX]
        debug = {"name": "sh", "image": "busybox:1.36"}
        api.seed(eks, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "debug", "namespace": "ops"},
                       "spec": {"nodeName": node, "containers": [debug]}})  # fmt: skip
        assert wait_until(lambda: eks.request("GET", "/api/v1/namespaces/ops/pods/debug")["status"].get("phase")
                          == "Running", 30)  # fmt: skip
        shop = [p["metadata"]["name"] for p in eks.pods(f"hashicups-{LAX.removeprefix('us-west-2-')}")
                if p["spec"].get("nodeName") == node]  # fmt: skip
        assert shop
        b.progress = said.append
        b.kill_node(node)
        gone = {p["metadata"]["name"] for p in eks.pods() if p["metadata"].get("deletionTimestamp")}
        assert wait_until(lambda: not {p["metadata"]["name"] for p in eks.pods()} & set(shop), 30), gone
        b.restore_node(node)
        left = [p["metadata"] for p in eks.pods("ops") if p["metadata"]["name"] == "debug"]
        assert left and not left[0].get("deletionTimestamp"), left
        assert [x for x in said if "ops/debug" in x and "no controller" in x], said
        assert wait_until(lambda: b.steady_state_problems() == [], 60)
    finally:
        b.close()

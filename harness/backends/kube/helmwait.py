"""While `helm upgrade --install --wait` waits for Consul's chart: a pod that cannot become Ready stops it early.

Why: helm's `--wait` (15 minutes here) says nothing until its timeout, and
then only "context deadline exceeded". Kubernetes says much earlier what is
wrong, on the pod itself: kube-scheduler's PodScheduled False, reason
Unschedulable, "0/N nodes are available: ..." (a node too small for the
server's requests; pkg/scheduler/schedule_one.go handleSchedulingFailure),
the kubelet's waiting reason ImagePullBackOff ("Back-off pulling image X",
the runtime's error in the pod's Warning event "Failed to pull image X: ...";
pkg/kubelet/images/image_manager.go) or CrashLoopBackOff (the container keeps
exiting; its last state holds the exit code). `stuck_pod` reads those each
poll, `run_watched` runs helm and stops it (SIGTERM: helm cancels its
context and marks the release failed, cmd/helm/install.go runInstall) when
one is found, so `up` fails with that one line, minutes before helm would.

What is final: an image that cannot be pulled, a container that keeps
exiting (neither changes without a new install), and on kind a pod the
scheduler cannot place while every node is Ready (kind's nodes are fixed: no
autoscaler adds one). On EKS an Unschedulable pod is exactly what
cluster-autoscaler or Karpenter add a node for, so it is said once per
message and helm waits on; a scheduler's message from before every node was
Ready (the not-ready or unreachable taint of a node kind just created) is
not yet final either.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol
from urllib.parse import quote

from harness.backends.base import ProgressFn
from harness.backends.kube.api import KubeApi, KubeApiError, _meta
from harness.errors import BackendError

Watch = Callable[[], "str | None"]
"""Asked each poll while a command runs: a line saying why to stop it, or None to let it run."""

# a container's waiting reason that no wait resolves (the kubelet's words; pkg/kubelet/images/types.go,
# pkg/kubelet/kuberuntime: CrashLoopBackOff). ErrImagePull, ContainerCreating and CreateContainerConfigError
# (a Secret another chart pod has yet to write) are on the way to Ready, not final.
FINAL_WAITING = {
    "ImagePullBackOff": "its image cannot be pulled",
    "ErrImageNeverPull": "its image is not on the node and its pull policy is Never",
    "InvalidImageName": "its image name is invalid",
    "CrashLoopBackOff": "it keeps exiting",
}
NODE_NOT_READY_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
PULL_ERROR_CHARS = 500
"""How much of the kubelet's pull error is kept: containerd puts the registry's own words last (Docker Hub's "429 Too
Many Requests - Server message: toomanyrequests: You have reached your unauthenticated pull rate limit. ..." ends
a message of about 400 characters), so a shorter cut kept the URL and lost the cause."""
STOP_GRACE_S = 30.0  # how long helm gets to mark its release failed after SIGTERM before it is killed


class HelmRun(Protocol):
    """Runs one helm command (BackendError when it fails); `watch`, when given, is asked each poll while it runs
    and stops it early (`StoppedEarly`) with the line it returns."""

    def __call__(self, args: Sequence[str], watch: Watch | None = None) -> None: ...


class StoppedEarly(BackendError):
    """`run_watched` stopped the command because `watch` found why it cannot succeed; `why` is that line."""

    def __init__(self, why: str, argv: Sequence[str]) -> None:
        self.why = why
        self.argv = list(argv)
        super().__init__(why)


def run_watched(
    argv: Sequence[str], *, timeout_s: float, poll_s: float, watch: Watch, stop_grace_s: float = STOP_GRACE_S
) -> subprocess.CompletedProcess[str]:
    """Run `argv` as `subprocess.run(capture_output=True, text=True)` would, asking `watch` every `poll_s`.

    `watch` returning a line stops the process (`_stop`: SIGTERM, SIGKILL
    after `stop_grace_s`) and raises `StoppedEarly`; `timeout_s` raises
    subprocess.TimeoutExpired as `subprocess.run` does. Any exception (a
    stop signal's `Interrupted` too) stops the process the same way before
    it propagates: nothing is left running, and helm has had its time to
    record the release failed. Killed outright, helm records nothing: the
    release stays pending-install (or pending-upgrade) in the cluster, and
    every later `helm upgrade --install` of it is refused with "another
    operation (install/upgrade/rollback) is in progress" (pkg/action/upgrade.go
    errPending, helm/helm#4558): the next `up` of a kept cluster failed there.
    """
    proc = subprocess.Popen(
        list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                out, err = proc.communicate(timeout=max(0.01, min(poll_s, deadline - time.monotonic())))
                return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
            except subprocess.TimeoutExpired:
                pass
            why = watch()
            if why:
                _stop(proc, stop_grace_s)
                raise StoppedEarly(why, argv)
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(list(argv), timeout_s)
    finally:
        _stop(proc, stop_grace_s)


def _stop(proc: subprocess.Popen[str], grace_s: float) -> None:
    """SIGTERM (helm cancels its context and marks the release failed: cmd/helm/install.go and upgrade.go
    signal.Notify; pkg/action failRelease), SIGKILL if it has not exited after `grace_s`, or at once when another
    exception (a stop signal the user insists with) cuts the grace short; nothing once it has exited."""
    if proc.poll() is not None:
        return
    try:
        proc.terminate()
        proc.communicate(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _one_line(text: Any, limit: int = 400) -> str:
    return " ".join(str(text or "").split())[:limit]


def _nodes_ready(api: KubeApi) -> bool:
    """Every node Ready and free of the not-ready/unreachable taints (False when they cannot be read)."""
    try:
        nodes = (api.request("GET", "/api/v1/nodes") or {}).get("items") or []
    except (KubeApiError, BackendError):
        return False
    for n in nodes:
        conds = {c.get("type"): c.get("status") for c in (n.get("status") or {}).get("conditions") or []}
        taints = {t.get("key") for t in (n.get("spec") or {}).get("taints") or []}
        if conds.get("Ready") != "True" or taints & set(NODE_NOT_READY_TAINTS):
            return False
    return bool(nodes)


def _last_warning(api: KubeApi, namespace: str, pod: str, reason: str) -> str:
    """The message of the pod's latest Warning event of `reason` ("" when none or events cannot be listed)."""
    selector = f"involvedObject.kind=Pod,involvedObject.name={pod}"
    try:
        answer = api.request(
            "GET", f"/api/v1/namespaces/{quote(namespace)}/events", query=[("fieldSelector", selector)]
        )
    except (KubeApiError, BackendError):
        return ""
    events = [
        e
        for e in (answer or {}).get("items") or []
        if (e.get("involvedObject") or {}).get("name") == pod
        and (e.get("type"), e.get("reason")) == ("Warning", reason)
        and not str(e.get("message") or "").startswith("Error: ")  # "Error: ErrImagePull" names no cause
    ]
    if not events:
        return ""
    last = max(events, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
    return _one_line(last.get("message"), PULL_ERROR_CHARS)


def _container_line(api: KubeApi, namespace: str, pod: str, cs: dict[str, Any]) -> str | None:
    """The line for one container status whose waiting reason is final, else None."""
    waiting = (cs.get("state") or {}).get("waiting") or {}
    reason = str(waiting.get("reason") or "")
    if reason not in FINAL_WAITING:
        return None
    name = cs.get("name")
    line = (
        f"{namespace}/{pod} container {name}: {reason} ({FINAL_WAITING[reason]}): {_one_line(waiting.get('message'))}"
    )
    if reason in ("ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName"):
        failed = _last_warning(api, namespace, pod, "Failed")
        return line + (f"; the kubelet: {failed}" if failed else "")
    last = (cs.get("lastState") or {}).get("terminated") or {}
    exited = f"last exit code {last.get('exitCode')} ({last.get('reason') or 'no reason'})" if last else "no exit seen"
    logs = f"kubectl logs -n {namespace} {pod} -c {name} --previous"
    return f"{line}; {exited}, restarts {cs.get('restartCount', 0)}; its log: {logs}"


def stuck_pod(
    api: KubeApi,
    namespace: str,
    *,
    release: str,
    unschedulable_final: bool,
    said: set[tuple[str, str]],
    progress: ProgressFn,
) -> str | None:
    """The first pod of helm release `release` in `namespace` that cannot become Ready as things are, in one line
    (None: none yet). The chart labels each of its pods `release: <name>`: another pod of the namespace (an
    operator's) is not the install's concern, as it is not helm's wait's.

    An Unschedulable pod that is not final (`unschedulable_final` False, or a
    node not Ready yet) is said through `progress` once per (pod, message)
    in `said`, and not returned. A pod being deleted is no one's concern; a
    list the API refuses is skipped (helm's own timeout still ends the wait).
    """
    try:
        answer = api.request(
            "GET", f"/api/v1/namespaces/{quote(namespace)}/pods", query=[("labelSelector", f"release={release}")]
        )
        pods = (answer or {}).get("items") or []
    except (KubeApiError, BackendError):
        return None
    for p in sorted(pods, key=lambda x: str(_meta(x).get("name"))):
        meta, status = _meta(p), p.get("status") or {}
        if meta.get("deletionTimestamp") or status.get("phase") in ("Succeeded", "Failed"):
            continue
        name = str(meta.get("name"))
        for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
            line = _container_line(api, namespace, name, cs)
            if line:
                return line
        if status.get("phase") != "Pending":
            continue
        for c in status.get("conditions") or []:
            if (c.get("type"), c.get("status"), c.get("reason")) != ("PodScheduled", "False", "Unschedulable"):
                continue
            why = _one_line(c.get("message")) or "Unschedulable"
            line = f"{namespace}/{name} cannot be scheduled: {why}"
            transient = any(t in why for t in NODE_NOT_READY_TAINTS)
            if unschedulable_final and not transient and _nodes_ready(api):
                return line
            if (name, why) not in said:
                said.add((name, why))
                progress(line + " (waiting: the scheduler retries as nodes change)")
    return None

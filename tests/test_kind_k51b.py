"""kind on a laptop, first contact with real kind (k51b): each test names the real behaviour it follows."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from harness.render import render, write
from harness.render.manifests import Manifests, load
from harness.topology.model import load_topology
from tests.conftest import REPO, wait_until
from tests.kubefake import FakeApiServer, rendered
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.test_backend_kind import Tools, kind_backend, up_refused, up_saying
from tests.test_backend_kind import tools as tools  # the fake tools on PATH, re-exported for pytest

pytestmark = pytest.mark.slow  # a fake API server and fake tools per test: seconds each


def _two_nodes_in_first_az(tmp_path: Path) -> Manifests:
    """The default topology with two nodes in us-west-2a (as topology-wide has): kind names its workers
    `edge-worker` and `edge-worker2` for that AZ, `edge-worker3` for us-west-2b, ..., `edge-worker7`."""
    text = (REPO / "fixtures" / "topology.yaml").read_text()
    head, sep, tail = text.partition("type: availability-zone\n    nodes: 1")
    assert sep, "the default topology's first AZ is not where this test looks for it"
    path = tmp_path / "two-in-2a.yaml"
    path.write_text(head + "type: availability-zone\n    nodes: 2" + tail)
    out = tmp_path / "two-in-2a"
    write(render(load_topology(path)), out)
    return load(out)


def test_a_left_over_cluster_of_another_shape_is_refused_not_reused(
    api: FakeApiServer, tools: Tools, tmp_path: Path
) -> None:
    """`kind get clusters` names a cluster whatever made it (kind lists the clusters its node containers' label
    `io.x-k8s.kind.cluster` names: pkg/cluster/internal/providers/docker/provider.go ListClusters): one kept
    (`--keep`) from another topology, or one whose `kind create` was interrupted before the workers joined
    (kind deletes its nodes only when create returns an error, not when it is killed: pkg/cluster/internal/
    create/create.go). `up` reused it "as it is": the zones' node counts were the old topology's, so a run
    judged a topology it did not run (two nodes in us-west-2a declared, az-node-loss there survivable; one
    node in the cluster, the AZ gone with it). The live nodes are now held to the rendered kind config (names
    kind gives them, labels, edge taints) before anything is installed: one line naming what differs."""
    first = kind_backend(tmp_path / "wd")
    first.up(rendered(tmp_path))
    first.close()
    tools.reset()
    msg = up_refused(tmp_path, manifests=_two_nodes_in_first_az(tmp_path))
    assert "\n" not in msg and "kind cluster edge" in msg, msg
    assert "edge-worker7: missing" in msg and "edge-worker2 in us-west-2b, not us-west-2a" in msg, msg
    assert "harness down" in msg, msg
    assert not [c for c in tools.calls() if c[:1] == ["helm"]], "refused before the chart is installed"


def test_a_left_over_cluster_of_the_same_shape_is_reused(api: FakeApiServer, tools: Tools, tmp_path: Path) -> None:
    """Control: the cluster a previous `up` of this topology made (`--keep`) is the shape the config says."""
    up_saying(tmp_path)
    said = up_saying(tmp_path)
    assert any("exists: reusing it" in s for s in said), said


# -- helm stopped by a stop signal ------------------------------------------------------------------------------------


def _helm_upgrade(bindir: Path, values: Path, kubeconfig: Path, *, wait: bool) -> list[str]:
    """`helm upgrade --install` of Consul's chart as `KubeBackend._helm_install` runs it."""
    return [
        str(bindir / "helm"), "upgrade", "--install", "consul", "hashicorp/consul", "--version", "1.9.11",
        "-n", "consul", "--create-namespace", "-f", str(values), "--kubeconfig", str(kubeconfig),
        *(["--wait", "--timeout", "15m"] if wait else []),
    ]  # fmt: skip


def test_helm_stopped_by_a_stop_signal_leaves_its_release_failed_not_pending(
    api: FakeApiServer, tools: Tools, tmp_path: Path
) -> None:
    """helm records a release's outcome in the cluster itself (the revision's Secret): pending-install while it
    runs, then deployed, or failed when its context is cancelled, which SIGINT/SIGTERM do (cmd/helm/install.go and
    upgrade.go: signal.Notify, cancel; pkg/action failRelease). Killed (SIGKILL), it records nothing, and every
    later `helm upgrade --install` of the release is refused: "UPGRADE FAILED: another operation
    (install/upgrade/rollback) is in progress" (pkg/action/upgrade.go errPending, helm/helm#4558). A stop signal
    (CI cancelling `harness up`, SIGTERM or SIGHUP to the harness alone; a Ctrl-C) while helm waited for the chart
    killed helm at once (`run_watched`'s `finally`), so the next `up` of the kept kind cluster (or of an EKS
    cluster) failed there. helm is now stopped as `run_watched`'s early stop does it: SIGTERM, time to record
    its release failed, and SIGKILL only after that grace; the next install goes on."""
    from harness.backends.kube.helmwait import run_watched
    from harness.interrupt import Interrupted

    values = tmp_path / "consul-values.yaml"
    values.write_text(yaml.safe_dump(rendered(tmp_path).helm_values))
    kubeconfig = tmp_path / "kubeconfig"  # (the fake helm talks to the simulation; no node: the chart stays Pending)
    asked: list[int] = []

    def stop_signal() -> str | None:
        asked.append(1)
        # helm has been waiting for the chart's pods a few polls: its install begun (pending-install), not only its
        # process started (the fake takes ~0.3 s to read the values on a loaded host; a count of polls alone raced it)
        begun = api.sim.call(lambda: api.sim.helm_status.get(("consul", "consul"))) == "pending-install"
        if begun and len(asked) >= 3:
            raise Interrupted(signal.SIGTERM)
        return None

    with pytest.raises(Interrupted):
        run_watched(_helm_upgrade(tools.bin, values, kubeconfig, wait=True), timeout_s=60, poll_s=0.1,
                    watch=stop_signal)  # fmt: skip
    assert api.sim.call(lambda: api.sim.helm_status[("consul", "consul")]) == "failed"
    again = subprocess.run(_helm_upgrade(tools.bin, values, kubeconfig, wait=False), capture_output=True, text=True,
                           timeout=60, check=False)  # fmt: skip
    assert again.returncode == 0 and "another operation" not in again.stderr, again.stderr


def test_helm_killed_leaves_its_release_pending(api: FakeApiServer, tools: Tools, tmp_path: Path) -> None:
    """The fake's likeness (control): a helm killed outright records nothing; the next upgrade is refused as real
    helm refuses it, and one that ran to its end leaves the release deployed."""
    values = tmp_path / "consul-values.yaml"
    values.write_text(yaml.safe_dump(rendered(tmp_path).helm_values))
    kubeconfig = tmp_path / "kubeconfig"
    proc = subprocess.Popen(_helm_upgrade(tools.bin, values, kubeconfig, wait=True), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert wait_until(lambda: api.sim.call(lambda: api.sim.helm_status.get(("consul", "consul"))) is not None, 30)
    proc.kill()
    proc.communicate()
    refused = subprocess.run(_helm_upgrade(tools.bin, values, kubeconfig, wait=False), capture_output=True, text=True,
                             timeout=60, check=False)  # fmt: skip
    assert refused.returncode == 1, refused
    assert (
        refused.stderr.strip() == "Error: UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress"
    )
    api.sim.call(lambda: api.sim.helm_status.clear())  # (as `helm rollback` or deleting the pending Secret would)
    done = subprocess.run(_helm_upgrade(tools.bin, values, kubeconfig, wait=False), capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert api.sim.call(lambda: api.sim.helm_status[("consul", "consul")]) == "deployed"


# -- the kubeconfig of a reused cluster -----------------------------------------------------------------------------


def test_a_reused_cluster_is_reached_through_the_kubeconfig_kind_exports_now(
    api: FakeApiServer, tools: Tools, tmp_path: Path
) -> None:
    """kind's cluster names are the Docker host's, a backend's workdir is its runs root's (runs/.backend under the
    directory `harness` runs in): a cluster `edge` made from another directory (another clone, a CI job's
    checkout) is this one's to reuse too. `up` reused the kubeconfig its own workdir held, whatever it was: one
    that `kind delete cluster --kubeconfig` of an earlier `down` had emptied (kind removes the kind-<name>
    cluster, user and context and keeps the file: pkg/cluster/internal/kubeconfig/internal/kubeconfig/
    remove.go), or one of an earlier cluster of that name (another CA, another API server port). `up` failed on
    it ("cannot use context kind-edge") though the cluster was there. A reused cluster's kubeconfig is now the
    one `kind export kubeconfig` writes for it now."""
    here = kind_backend(tmp_path / "here")
    here.up(m := rendered(tmp_path))
    here.down()  # `harness down`: the cluster gone, its kubeconfig file kept without the cluster's entries
    elsewhere = kind_backend(tmp_path / "elsewhere")
    elsewhere.up(m)  # the same cluster name, made from another directory
    elsewhere.close()
    tools.reset()
    again = kind_backend(tmp_path / "here")
    said: list[str] = []
    try:
        again.up(m, progress=said.append)
    finally:
        again.close()
    assert any("exists: reusing it" in s for s in said), said
    assert ["kind", "export", "kubeconfig", "--name", "edge", "--kubeconfig", str(tmp_path / "here" / "kubeconfig")] \
        in tools.calls()  # fmt: skip


def test_a_cluster_whose_create_was_cut_short_is_named_as_such(
    api: FakeApiServer, tools: Tools, tmp_path: Path
) -> None:
    """`kind create` killed before `kubeadm init` finished (a Ctrl-C of `harness up` while kind creates: kind
    deletes what it made only when create returns an error, pkg/cluster/internal/create/create.go) leaves node
    containers, which `kind get clusters` lists, and no /etc/kubernetes/admin.conf, which `kind export kubeconfig`
    reads (pkg/cluster/internal/kubeconfig/kubeconfig.go: "failed to get cluster internal kubeconfig"). `up`
    reused it and failed with kind's line alone, naming neither the cause nor the way out; it now says both."""
    api.sim.call(lambda: setattr(api.sim, "kind_cluster", "edge"))
    api.sim.call(lambda: setattr(api.sim, "kind_cut_short", True))
    msg = up_refused(tmp_path)
    assert "\n" not in msg and "failed to get cluster internal kubeconfig" in msg, msg
    assert "create cut short" in msg and "`harness down --backend kind --cluster edge`" in msg, msg
    assert not [c for c in tools.calls() if c[:1] == ["helm"]]

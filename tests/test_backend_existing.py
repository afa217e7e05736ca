"""The existing (EKS) backend against the simulated cluster with EKS-like nodes.

EKS nodes carry `topology.kubernetes.io/zone` (a Local Zone's name, e.g.
us-west-2-lax-1a) and region labels set from the instance, but none of the
harness's own labels; their kubelets run in the simulation, so pods really
schedule, start and become Ready. Each test here pins a finding of issue 9
(or keeps an earlier guarantee): per-zone entry URLs checked before anything
(1), Consul placement that EKS nodes satisfy and the checks of a Consul that
is already there (2), faults EKS cannot do refused before anything is
recorded (3, 5), mesh-wide config entries left alone or restored (4), no
watcher left running after `close` (6).
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from harness.backends.base import Status
from harness.backends.existing import (
    PARTITION_POLICY,
    ExistingBackend,
    check_zones,
    parse_entrypoints,
    zone_probe_placement,
    zone_type_of,
)
from harness.backends.kube import KubeCluster, NodeInfo
from harness.backends.kube.backend import envoy_flush_ms
from harness.contract.rundir import ACCESS_LOG_FIELDS
from harness.errors import BackendError, InputError
from harness.render.manifests import Manifests, load
from tests.conftest import REPO, complete_jsonl, wait_until
from tests.kubefake import FakeApiServer, fake_tools, rendered
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.kubefake import nothing_refused as nothing_refused
from tests.kuberbac import nightly_rules
from tests.kubesim import SimTimings

# a fake API server per test: seconds each; every call of the nightly's context granted by the shipped role
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("nothing_refused")]

LAX, LAS, PHX, SFO = "us-west-2-lax-1a", "us-west-2-las-1a", "us-west-2-phx-2a", "us-west-2-wl1-sfo-wlz-1"
ZONES = ("us-west-2a", "us-west-2b", LAX, LAS, PHX, SFO)


def eks_node(ip: str, zone: str, group: str) -> dict[str, Any]:
    """An EKS managed-node-group node as the API shows it (no edge-harness labels)."""
    name = f"ip-{ip.replace('.', '-')}.us-west-2.compute.internal"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "topology.kubernetes.io/region": "us-west-2",
                "topology.kubernetes.io/zone": zone,
                "kubernetes.io/hostname": name,
                "node.kubernetes.io/instance-type": "m5.large" if "-" not in zone[10:] else "t3.xlarge",
                "eks.amazonaws.com/nodegroup": group,
            },
        },
        "spec": {"podCIDR": ip.rsplit(".", 1)[0] + ".0/24"},
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
        },
    }


EKS_NODES = [
    eks_node("10.0.1.10", "us-west-2a", "region-a"),
    eks_node("10.0.2.10", "us-west-2b", "region-b"),
    eks_node("10.0.3.10", LAX, "lz-lax"),
    eks_node("10.0.4.10", LAS, "lz-las"),
    eks_node("10.0.5.10", PHX, "lz-phx"),
    eks_node("10.0.5.11", PHX, "lz-phx"),
    eks_node("10.0.6.10", "us-west-2c", "region-c"),  # not in the topology
    eks_node("10.0.7.10", SFO, "wz-sfo"),  # a Wavelength Zone (carrier network)
]
NODE = {n["metadata"]["labels"]["topology.kubernetes.io/zone"]: n["metadata"]["name"] for n in EKS_NODES}
ENTRY = {z: f"https://{z}.shop.example.test" for z in ZONES}


CONTEXT = "eks-nightly"


def _backend(api: FakeApiServer, tmp_path: Path, allow: tuple[str, ...] = (), **kw: Any) -> ExistingBackend:
    """The nightly's backend; its context may do what the shipped RBAC files grant its mode, nothing more."""
    api.grant(CONTEXT, nightly_rules(install_consul=bool(kw.get("install_consul"))))
    kc = api.write_kubeconfig(tmp_path / "kubeconfig", CONTEXT)
    kw.setdefault("entrypoints", [f"{z}={u}" for z, u in ENTRY.items()])
    b = ExistingBackend(CONTEXT, kc, allow, workdir=tmp_path / "wd", **kw)
    b.ready_poll_s = 0.1
    return b


def _cluster(api: FakeApiServer, tmp_path: Path, consul: dict[str, Any] | None = None) -> KubeCluster:
    """EKS-like nodes with storage as a prepared EKS 1.31 nightly cluster has it (the aws-ebs-csi-driver add-on,
    whose ebs-csi-default-sc is the default class), and (unless `consul` is {}) the Consul an operator installed
    with the rendered values. The nightly's context (`eks-nightly`) may do exactly what the shipped
    deploy/eks-nightly-rbac.yaml grants; the returned client is the operator's (admin)."""
    api.grant(CONTEXT, nightly_rules())
    c = api.cluster(tmp_path, "admin")
    api.seed(c, *EKS_NODES)
    api.sim.call(lambda: api.sim.eks_storage(31, ebs_csi_addon=True, addon_default_class=True))
    if consul != {}:
        api.install_consul(consul or rendered(tmp_path / "operator").helm_values)
        assert wait_until(lambda: bool(c.find_consul()) and c.find_consul().servers_ready == 1, 60)  # type: ignore[union-attr]
    return c


@pytest.fixture
def eks(api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[KubeCluster]:
    """The operator's cluster, and the fake kubectl on PATH: `up` reaches Consul's API through a port-forward."""
    for k in ("EH_ENTRYPOINTS", "EH_ALLOW_CONTEXTS", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE", "CONSUL_CACERT"):
        monkeypatch.delenv(k, raising=False)
    fake_tools(api, tmp_path, monkeypatch)
    yield _cluster(api, tmp_path)


def _mutations(api: FakeApiServer) -> list[tuple[str, str]]:
    return [(m, p) for m, p, _d in api.writes()]


# -- zones ------------------------------------------------------------------------


def test_zone_types_from_labels_or_aws_naming() -> None:
    def n(zone: str, zt: str = "") -> NodeInfo:
        return NodeInfo("n", zone, "us-west-2", zt, "", (), False)

    assert zone_type_of(n("us-west-2a")) == "availability-zone"
    assert zone_type_of(n("us-west-2-lax-1a")) == "local-zone"
    assert zone_type_of(n("us-east-1-wl1-bos-wlz-1")) == "wavelength-zone"
    assert zone_type_of(n("us-west-2a", "local-zone")) == "local-zone"  # the label wins


def test_zone_check_reports_missing_mistyped_and_extra(tmp_path: Path) -> None:
    t = rendered(tmp_path).topology
    nodes = [
        NodeInfo("a", "us-west-2a", "us-west-2", "", "", (), False),
        NodeInfo("b", "us-west-2b", "us-west-2", "", "", (), False),
        NodeInfo("c", LAX, "us-west-2", "wavelength-zone", "", (), False),
        NodeInfo("d", LAS, "us-west-2", "", "", (), False),
        NodeInfo("e", "us-west-2c", "us-west-2", "", "", (), False),
        NodeInfo("f", SFO, "us-west-2", "", "", (), False),
    ]
    r = check_zones(nodes, t)
    assert r.problems == [
        f"zone {LAX} is wavelength-zone in the cluster but local-zone in the topology",
        f"zone {PHX} (local-zone) has no nodes",
    ]
    assert r.extra == ["us-west-2c"]
    wrong_region = [NodeInfo(x.name, x.zone, "eu-west-1", x.zone_type, "", (), False) for x in nodes]
    assert "nodes are in region eu-west-1, the topology says us-west-2" in check_zones(wrong_region, t).problems


def test_up_refuses_a_cluster_that_does_not_match(api: FakeApiServer, tmp_path: Path) -> None:
    c = api.cluster(tmp_path, "admin")
    api.seed(c, *EKS_NODES[:3])
    before = _mutations(api)
    b = _backend(api, tmp_path)
    with pytest.raises(
        BackendError,
        match=rf"^context eks-nightly does not match the topology: zone {LAS} \(local-zone\) has no nodes; "
        rf"zone {PHX} \(local-zone\) has no nodes; zone {SFO} \(wavelength-zone\) has no nodes$",
    ):
        b.up(rendered(tmp_path))
    assert _mutations(api) == before  # nothing applied


# -- finding 1: every zone's way in, checked before anything ------------------------------


def test_entry_urls_are_checked_at_start_one_line_exit_2_nothing_changed(
    api: FakeApiServer, eks: KubeCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from harness.cli import main

    kc = api.write_kubeconfig(tmp_path / "kubeconfig", "eks-nightly")
    monkeypatch.chdir(tmp_path)
    before = _mutations(api)
    args = ["up", "--backend", "existing", "--context", "eks-nightly", "--kubeconfig", str(kc)]
    given = [f"--entrypoint={z}={u}" for z, u in ENTRY.items() if z not in (LAX, PHX)]
    assert main([*args, *given]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"--entrypoint: no entry URL for zone(s) {LAX}, {PHX}: pass --entrypoint ZONE=URL for each "
        f'(or EH_ENTRYPOINTS=\'{{"<zone>": "http://..."}}\'), or give the zone albSubnets in the topology'
    ]
    assert main([*args, *given, "--entrypoint", "nowhere"]) == 2
    assert capsys.readouterr().err.strip() == "--entrypoint: expected ZONE=URL, got 'nowhere'"
    monkeypatch.setenv("EH_ENTRYPOINTS", "{not json")
    assert main(args) == 2
    assert capsys.readouterr().err.startswith("EH_ENTRYPOINTS: not JSON:")
    assert _mutations(api) == before


LAX_SUBNET = "subnet-0a1b2c3d4e5f60718"
VPC_SUBNETS = {
    LAX_SUBNET: (LAX, "local-zone"),
    "subnet-0a1b2c3d4e5f60720": ("us-west-2a", "availability-zone"),
    "subnet-0a1b2c3d4e5f60721": ("us-west-2b", "availability-zone"),
}
"""Subnets of the fake cluster's VPC (EC2's DescribeSubnets: zone, zone type) for the simulated ALB controller."""


def _alb_manifests(tmp_path: Path, albs: dict[str, list[str]]) -> Manifests:
    """The default topology with `albSubnets` on the zones named, rendered and loaded."""
    from harness.render import render, write
    from harness.topology.model import load_topology

    topo = (REPO / "fixtures" / "topology.yaml").read_text()
    for zone, subnets in albs.items():
        line = next(x for x in topo.splitlines(keepends=True) if x.split("#")[0].strip() == f"- name: {zone}")
        topo = topo.replace(line, f"  - name: {zone}\n    albSubnets: [{', '.join(subnets)}]\n")
    (tmp_path / "alb.yaml").write_text(topo)
    write(render(load_topology(tmp_path / "alb.yaml")), tmp_path / "alb")
    return load(tmp_path / "alb")


@pytest.fixture
def albs(api: FakeApiServer, monkeypatch: pytest.MonkeyPatch) -> FakeApiServer:
    """The VPC's subnets known to the simulated AWS Load Balancer Controller, and its ALBs' DNS names resolved
    for `up`'s wait (a name resolves only once its ALB routes)."""
    import harness.backends.existing as existing

    api.sim.call(lambda: api.sim.vpc_subnets.update(VPC_SUBNETS))
    monkeypatch.setattr(existing, "entry_answer", api.through_albs(existing.entry_answer))
    return api


def test_entry_urls_from_flags_env_and_alb_ingress(albs: FakeApiServer, eks: KubeCluster, tmp_path: Path) -> None:
    import harness.backends.existing as existing

    api = albs
    assert parse_entrypoints([f"{LAX}=http://a/"], json.dumps({LAX: "http://b", LAS: "http://c"})) == {
        LAX: "http://a",
        LAS: "http://c",
    }
    with pytest.raises(InputError, match=r"^EH_ENTRYPOINTS: us-west-2a: not an http\(s\) URL: 'ftp://x'$"):
        parse_entrypoints([], json.dumps({"us-west-2a": "ftp://x"}))
    # a zone whose topology entry has ALB subnets gets an Ingress; its URL is the ALB's address
    m = _alb_manifests(tmp_path, {LAX: [LAX_SUBNET]})
    ing = next(o for o in m.entry_objects("cluster.yaml") if o["kind"] == "Ingress")
    assert ing["metadata"]["annotations"]["alb.ingress.kubernetes.io/subnets"] == LAX_SUBNET
    b = _backend(api, tmp_path, entrypoints=[f"{z}={u}" for z, u in ENTRY.items() if z != LAX])
    b.up(m)
    urls = b.entrypoints()
    assert urls[LAX].startswith("http://k8s-hashicup-entry-la-") and urls[LAX].endswith(".elb.amazonaws.com")
    assert urls[LAS] == ENTRY[LAS]
    assert existing.entry_answer(urls[LAX]) == ""  # the zone's users get in as soon as `up` is through
    b.close()


def test_up_waits_until_a_new_alb_answers_not_only_for_its_address(
    albs: FakeApiServer, eks: KubeCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The AWS Load Balancer Controller gives the Ingress the ALB's DNS name as soon as it created the ALB
    (controllers/ingress/group_controller.go `reconcile`), which is then `provisioning` for minutes and does not
    route; `up` took the address for a way in, and the zone's clock probes and first users failed. An ALB that
    never routes now stops `up`, naming it (the bound shortened here: the ALB is held, so no bound would do)."""
    import harness.backends.existing as existing

    api = albs
    api.sim.call(lambda: setattr(api.sim, "alb_held", True))
    monkeypatch.setattr(existing, "ALB_WAIT_S", 3.0)
    b = _backend(api, tmp_path, entrypoints=[f"{z}={u}" for z, u in ENTRY.items() if z != LAX])
    with pytest.raises(BackendError) as exc:
        b.up(_alb_manifests(tmp_path, {LAX: [LAX_SUBNET]}))
    msg = str(exc.value)
    assert f"the ALB of {LAX} (http://k8s-hashicup-entry-la-" in msg and "does not answer after 3 s" in msg
    assert "Name or service not known" in msg
    b.close()


@pytest.mark.parametrize(
    ("albs_of", "said"),
    [
        ({LAX: ["subnet-0a1b2c3d4e5f60799"]}, "InvalidSubnetID.NotFound: The subnet ID 'subnet-0a1b2c3d4e5f60799'"),
        ({"us-west-2a": ["subnet-0a1b2c3d4e5f60720"]}, "subnets count less than minimal required count: 1 < 2"),
        ({"us-west-2a": ["subnet-0a1b2c3d4e5f60720", "subnet-0a1b2c3d4e5f60721"]}, None),
    ],
    ids=["subnet-not-in-the-vpc", "one-subnet-in-the-region", "two-azs"],
)
def test_an_alb_the_controller_refuses_is_named_with_its_reason(
    albs: FakeApiServer,
    eks: KubeCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    albs_of: dict[str, list[str]],
    said: str | None,
) -> None:
    """The controller refuses subnets it cannot use with a Warning event on the Ingress (FailedBuildModel,
    pkg/networking/subnet_resolver.go) and gives it no address; `up` said only "is the controller installed?"
    after its bound. It now names what the controller said. Control: two subnets in two AZs get an ALB."""
    import harness.backends.existing as existing

    api = albs
    monkeypatch.setattr(existing, "ALB_WAIT_S", 2.0)
    zone = next(iter(albs_of))
    b = _backend(api, tmp_path, entrypoints=[f"{z}={u}" for z, u in ENTRY.items() if z != zone])
    m = _alb_manifests(tmp_path, albs_of)
    if said is None:
        b.up(m)
        assert b.entrypoints()[zone].endswith(".elb.amazonaws.com")
    else:
        with pytest.raises(BackendError) as exc:
            b.up(m)
        msg = str(exc.value)
        assert f"the ALB of {zone} (Ingress " in msg and "has no address after 2 s" in msg
        assert "the AWS Load Balancer Controller says FailedBuildModel: Failed build model due to " in msg
        assert said in msg
    b.close()


# -- finding 2: Consul on EKS ----------------------------------------------------------


def test_the_rendered_consul_values_place_the_server_on_eks_nodes(
    api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--install-consul` with the rendered values: the server runs in a Region AZ of an EKS cluster."""
    fake_tools(api, tmp_path, monkeypatch)
    c = _cluster(api, tmp_path, consul={})
    b = _backend(api, tmp_path, ("eks-nightly",), install_consul=True)
    m = rendered(tmp_path)
    b.up(m)
    server = c.pods("consul", {"component": "server"})[0]
    assert server["status"]["phase"] == "Running"
    assert c.nodes()[server["spec"]["nodeName"]] in ("us-west-2a", "us-west-2b")
    # its volume (the default class, WaitForFirstConsumer) was made in the zone the server was scheduled in
    pvc = c.request("GET", "/api/v1/namespaces/consul/persistentvolumeclaims/data-consul-consul-server-0")
    assert (pvc["status"]["phase"], pvc["spec"]["storageClassName"]) == ("Bound", "ebs-csi-default-sc")
    pv = c.request("GET", f"/api/v1/persistentvolumes/{pvc['spec']['volumeName']}")
    zone = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"]
    assert zone == [c.nodes()[server["spec"]["nodeName"]]]
    wd = tmp_path / "wd" / "existing-eks-nightly"
    calls = [json.loads(x) for x in (tmp_path / "argv.jsonl").read_text().splitlines()]
    assert [x for x in calls if x[0] == "helm"] == [
        ["helm", "repo", "add", "hashicorp", "https://helm.releases.hashicorp.com", "--force-update"],
        [
            "helm", "upgrade", "--install", "consul", "hashicorp/consul", "--version", "1.9.11",
            "-n", "consul", "--create-namespace", "-f", str(wd / "consul-values.yaml"),
            "--kube-context", "eks-nightly", "--kubeconfig", str(tmp_path / "kubeconfig"), "--wait", "--timeout", "15m",
        ],
    ]  # fmt: skip
    b.down()  # it installed Consul, so it uninstalls it (and the namespace helm created)
    assert wait_until(lambda: c.find_consul() is None, 60)
    uninstall = ["helm", "uninstall", "consul", "-n", "consul", "--timeout=300s", "--kube-context", "eks-nightly"]
    calls = [json.loads(x) for x in (tmp_path / "argv.jsonl").read_text().splitlines()]
    assert [*uninstall, "--kubeconfig", str(tmp_path / "kubeconfig")] in calls
    assert wait_until(lambda: not c.exists("v1", "Namespace", None, "consul"), 60)

    # what the values used to say: a zone-type label EKS nodes never carry -> the server stays Pending
    old = {**m.helm_values, "server": {"replicas": 1, "nodeSelector": "edge-harness.io/zone-type: availability-zone\n"}}
    api.sim.call(lambda: api.sim.install_consul(old))
    assert wait_until(lambda: bool(c.pods("consul", {"component": "server"})), 60)
    assert wait_until(lambda: "didn't match" in json.dumps(c.pods("consul", {"component": "server"})[0]["status"]), 60)
    assert c.pods("consul", {"component": "server"})[0]["status"]["phase"] == "Pending"


# -- the Consul server's volume on a new EKS cluster ------------------------------------------


def _helm_ran(log: Path) -> list[list[str]]:
    calls = complete_jsonl(log)
    return [x for x in calls if x[:3] == ["helm", "upgrade", "--install"]]


def _default_class(name: str, provisioner: str, **spec: Any) -> dict[str, Any]:
    """A StorageClass annotated as the cluster's default."""
    return {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": name, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": provisioner, **spec}  # fmt: skip


def _new_eks(api: FakeApiServer, tmp_path: Path, minor: int = 30, **storage: Any) -> KubeCluster:
    c = api.cluster(tmp_path, "admin")
    api.seed(c, *EKS_NODES)
    api.sim.call(lambda: api.sim.eks_storage(minor, **storage))
    return c


def _claim(c: KubeCluster, name: str = "data-consul-consul-server-0") -> dict[str, Any]:
    return dict(c.request("GET", f"/api/v1/namespaces/consul/persistentvolumeclaims/{name}"))


def _claim_events(c: KubeCluster, name: str = "data-consul-consul-server-0") -> list[tuple[str, str]]:
    items = c.request("GET", "/api/v1/namespaces/consul/events")["items"]
    return [(e["reason"], e["message"]) for e in items if e["involvedObject"]["name"] == name]


def test_a_new_eks_1_30_cluster_leaves_the_charts_server_pending(api: FakeApiServer, tmp_path: Path) -> None:
    """The fake as EKS 1.30+ is: gp2 not default, no EBS CSI driver; each of the two fixes is needed."""
    c = _new_eks(api, tmp_path)
    classes = c.request("GET", "/apis/storage.k8s.io/v1/storageclasses")["items"]
    assert [(x["metadata"]["name"], x["provisioner"], (x["metadata"].get("annotations") or {})) for x in classes] == [
        ("gp2", "kubernetes.io/aws-ebs", {})
    ]
    assert c.request("GET", "/apis/storage.k8s.io/v1/csidrivers")["items"] == []
    assert c.request("GET", "/version")["gitVersion"].startswith("v1.30.")
    api.install_consul(rendered(tmp_path).helm_values)
    assert wait_until(lambda: "no storage class is set" in json.dumps(_claim_events(c)), 30)
    server = c.pods("consul", {"component": "server"})[0]
    assert "pod has unbound immediate PersistentVolumeClaims" in json.dumps(server["status"])
    # gp2 marked default: the claim gets it (retroactively), but nothing serves kubernetes.io/aws-ebs
    c.request("PATCH", "/apis/storage.k8s.io/v1/storageclasses/gp2",
              body={"metadata": {"annotations": {"storageclass.kubernetes.io/is-default-class": "true"}}},
              content_type="application/merge-patch+json")  # fmt: skip
    assert wait_until(lambda: "external provisioner 'ebs.csi.aws.com'" in json.dumps(_claim_events(c)), 30)
    assert _claim(c)["status"]["phase"] == "Pending"
    assert c.pods("consul", {"component": "server"})[0]["status"]["phase"] == "Pending"
    # the add-on: the volume is made where the server was scheduled (a Region AZ), and the server starts
    api.sim.call(lambda: api.sim.add_ebs_csi_driver())
    assert wait_until(lambda: _claim(c)["status"]["phase"] == "Bound", 30)
    assert wait_until(lambda: c.find_consul() is not None and c.find_consul().servers_ready == 1, 30)  # type: ignore[union-attr]
    server = c.pods("consul", {"component": "server"})[0]
    assert c.nodes()[server["spec"]["nodeName"]] in ("us-west-2a", "us-west-2b")


NO_DEFAULT_NO_DRIVER = (
    r"^context eks-nightly: the Consul server's volume \(PersistentVolumeClaim consul/data-consul-consul-server-0\) "
    r"would not be provisioned where the server can use it, and without it the server never starts \(helm waits 15 "
    r'minutes, then says only "context deadline exceeded"\): there is no default StorageClass and '
    r"server.storageClass is empty in \S+/consul-values.yaml \(EKS 1.30 and later no "
    r"longer mark gp2 as the default\); gp2 cannot provision either: ebs.csi.aws.com \(CSI driver of "
    r"kubernetes.io/aws-ebs\) is not installed \(no CSIDriver ebs.csi.aws.com\)\. Fix: install the "
    r"aws-ebs-csi-driver add-on \(aws eks create-addon --cluster-name <cluster> --addon-name aws-ebs-csi-driver, "
    r"with an IAM role holding AmazonEBSCSIDriverPolicy; add-on >= v1.31.0 with defaultStorageClass.enabled=true "
    r"also adds a default class\); or install the aws-ebs-csi-driver add-on, then mark a class default \(kubectl "
    r"annotate storageclass gp2 storageclass.kubernetes.io/is-default-class=true\); or set server.storageClass in "
    r"\S+/consul-values.yaml to a class whose provisioner runs$"
)


@pytest.mark.parametrize(
    ("storage", "values", "message"),
    [
        ({}, {}, NO_DEFAULT_NO_DRIVER),
        (  # gp2 marked default by hand, but no driver for it
            {"gp2_default": True},
            {},
            r"StorageClass gp2 \(the default\) has provisioner kubernetes.io/aws-ebs \(in-tree, served by "
            r"ebs.csi.aws.com since CSI migration\), and ebs.csi.aws.com is not installed \(no CSIDriver "
            r"ebs.csi.aws.com\)\. Fix: install the aws-ebs-csi-driver add-on",
        ),
        (  # the values name a class the cluster does not have
            {"ebs_csi_addon": True},
            {"storageClass": "gp3"},
            r"server.storageClass 'gp3' is no StorageClass of the cluster \(there are: gp2\)\. Fix: set "
            r"server.storageClass in \S+/consul-values.yaml to one that exists, or create gp3$",
        ),
        (  # a default class that picks the volume's zone before the server is scheduled
            {"ebs_csi_addon": True, "immediate_default": True},
            {},
            r"StorageClass gp3-now \(the default\) binds Immediate: the volume's zone is chosen before the server "
            r"is scheduled and may be a Local Zone or an AZ the server may not run in \(its affinity keeps it in "
            r"us-west-2a, us-west-2b; an EBS volume attaches only in its own zone\)\. Fix: use a class with "
            r"volumeBindingMode WaitForFirstConsumer \(as EKS's gp2\), or confine gp3-now's allowedTopologies",
        ),
        (  # a default class of pre-made local volumes, none of them Available
            {"no_provisioner_default": True},
            {},
            r"StorageClass local-disks \(the default\) provisions nothing \(kubernetes.io/no-provisioner\) and has no "
            r"Available volume\. Fix: create a PersistentVolume of class local-disks, or use a class with a "
            r"provisioner$",
        ),
    ],
    ids=["new-eks-1.30", "gp2-default-no-driver", "no-such-class", "immediate-binding", "no-provisioner"],
)
def test_install_consul_refuses_a_server_volume_that_cannot_be_provisioned_before_anything_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, storage: dict[str, Any], values: dict[str, Any], message: str
) -> None:
    """One line naming what is missing and the fix, at once, nothing changed (helm's `--wait` is cut to 3 s
    here: without the check the install would run and fail later with "context deadline exceeded")."""
    monkeypatch.delenv("EH_ENTRYPOINTS", raising=False)
    with FakeApiServer(SimTimings(helm_wait_cap_s=3.0)) as server:
        log = fake_tools(server, tmp_path, monkeypatch)
        c = _new_eks(server, tmp_path, ebs_csi_addon=bool(storage.get("ebs_csi_addon")))
        if storage.get("gp2_default"):
            c.request("PATCH", "/apis/storage.k8s.io/v1/storageclasses/gp2",
                      body={"metadata": {"annotations": {"storageclass.kubernetes.io/is-default-class": "true"}}},
                      content_type="application/merge-patch+json")  # fmt: skip
        if storage.get("immediate_default"):
            server.seed(c, _default_class("gp3-now", "ebs.csi.aws.com", parameters={"type": "gp3"}))
        if storage.get("no_provisioner_default"):
            server.seed(c, _default_class("local-disks", "kubernetes.io/no-provisioner",
                                          volumeBindingMode="WaitForFirstConsumer"))  # fmt: skip
        m = _with_server_values(rendered(tmp_path), values)
        before = _mutations(server)
        b = _backend(server, tmp_path, install_consul=True)
        with pytest.raises(BackendError, match=message):
            b.up(m)
        assert _mutations(server) == before
        assert _helm_ran(log) == []


def _with_server_values(m: Manifests, server: dict[str, Any]) -> Manifests:
    """The rendered directory with `server` keys set in its Helm values file (as an operator edits it)."""
    if not server:
        return m
    path = Path(m.root) / "consul-values.yaml"
    values = yaml.safe_load(path.read_text())
    values["server"].update(server)
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return load(Path(m.root))


def test_install_consul_takes_the_class_the_values_name(
    api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No default class, but the values name gp2 and the driver runs: the install goes ahead, the server starts."""
    monkeypatch.delenv("EH_ENTRYPOINTS", raising=False)
    log = fake_tools(api, tmp_path, monkeypatch)
    c = _new_eks(api, tmp_path, ebs_csi_addon=True)
    b = _backend(api, tmp_path, install_consul=True)
    b.up(_with_server_values(rendered(tmp_path), {"storageClass": "gp2"}))
    assert len(_helm_ran(log)) == 1
    assert _claim(c)["spec"]["storageClassName"] == "gp2" and _claim(c)["status"]["phase"] == "Bound"
    b.close()


def test_down_deletes_the_server_volume_its_install_made_in_a_namespace_it_did_not_create(
    api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`helm uninstall` keeps a StatefulSet's claims (hashicorp/consul#4891). A Consul namespace `up` created goes
    with them; one that was there before stays, and so did the server's EBS volume, whose old Raft data the next
    night's install then started from. `down` deletes the claims of the release it installed, and only those."""
    monkeypatch.delenv("EH_ENTRYPOINTS", raising=False)
    fake_tools(api, tmp_path, monkeypatch)
    c = _new_eks(api, tmp_path, ebs_csi_addon=True, addon_default_class=True)
    c.request("POST", "/api/v1/namespaces", body={"metadata": {"name": "consul"}})
    other = {"app": "consul", "release": "other", "component": "server"}  # another release's server volume
    theirs = {"metadata": {"name": "data-theirs", "labels": other},
              "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}  # fmt: skip
    c.request("POST", "/api/v1/namespaces/consul/persistentvolumeclaims", body=theirs)
    b = _backend(api, tmp_path, install_consul=True)
    b.up(rendered(tmp_path))
    assert _claim(c)["status"]["phase"] == "Bound"
    said: list[str] = []
    b.progress = said.append
    b.down()
    claims = c.request("GET", "/api/v1/namespaces/consul/persistentvolumeclaims")["items"]
    assert [x["metadata"]["name"] for x in claims] == ["data-theirs"]  # ours gone, another release's kept
    assert c.exists("v1", "Namespace", None, "consul")  # not created by the run: kept
    assert any("data-consul-consul-server-0" in line for line in said), said


@pytest.mark.parametrize(
    ("case", "note"),
    [
        ("cannot-list-classes", "cannot list StorageClasses (HTTP 403): the Consul server's volume is not checked"),
        ("external-provisioner", "provisioner example.com/nfs is no CSI driver the cluster registers"),
        ("immediate-confined-to-the-region", None),
    ],
)
def test_install_consul_goes_ahead_when_the_server_volume_check_cannot_object(
    api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, note: str | None
) -> None:
    """The check's other outcomes: an identity that may not list StorageClasses, and a provisioner that is no CSI
    driver (an external one: whether it runs cannot be seen from the API), get a note and the install goes ahead;
    an Immediate class whose allowedTopologies keep volumes in the Region's AZs passes with nothing said (the
    volume cannot land in a Local Zone). In each the server's claim is bound."""
    monkeypatch.delenv("EH_ENTRYPOINTS", raising=False)
    fake_tools(api, tmp_path, monkeypatch)
    c = _new_eks(api, tmp_path, ebs_csi_addon=True, addon_default_class=case == "cannot-list-classes")
    if case == "cannot-list-classes":
        api.sim.forbidden.add(("list", "storageclasses"))
    if case == "external-provisioner":
        api.seed(c, _default_class("nfs", "example.com/nfs", volumeBindingMode="WaitForFirstConsumer"))
        api.sim.provisioners_running.add("example.com/nfs")
    if case == "immediate-confined-to-the-region":
        azs = {
            "matchLabelExpressions": [{"key": "topology.kubernetes.io/zone", "values": ["us-west-2a", "us-west-2b"]}]
        }
        api.seed(c, _default_class("gp3-region", "ebs.csi.aws.com", allowedTopologies=[azs]))
    said: list[str] = []
    b = _backend(api, tmp_path, install_consul=True, progress=said.append)
    b.up(rendered(tmp_path))
    volume_notes = [line for line in said if "StorageClass" in line or "provisioner" in line]
    if note is None:
        assert volume_notes == [], said
    else:
        assert len(volume_notes) == 1 and note in volume_notes[0], said
    assert _claim(c)["status"]["phase"] == "Bound"
    if case == "immediate-confined-to-the-region":
        pv = c.request("GET", f"/api/v1/persistentvolumes/{_claim(c)['spec']['volumeName']}")
        zone = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"]
        assert zone[0] in ("us-west-2a", "us-west-2b")
    b.close()


def test_down_says_so_when_it_may_not_list_the_server_volume(
    api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An identity that may not list claims: Consul is uninstalled all the same, and the line names the command
    that deletes what remains."""
    monkeypatch.delenv("EH_ENTRYPOINTS", raising=False)
    log = fake_tools(api, tmp_path, monkeypatch)
    c = _new_eks(api, tmp_path, ebs_csi_addon=True, addon_default_class=True)
    c.request("POST", "/api/v1/namespaces", body={"metadata": {"name": "consul"}})
    b = _backend(api, tmp_path, install_consul=True)
    b.up(rendered(tmp_path))
    api.sim.forbidden.add(("list", "persistentvolumeclaims"))
    said: list[str] = []
    b.progress = said.append
    b.down()
    assert any(x[:3] == ["helm", "uninstall", "consul"] for x in map(json.loads, log.read_text().splitlines()))
    assert any(line.startswith("cannot list PersistentVolumeClaims in consul (403)") and
               "kubectl delete pvc -n consul -l app=consul,release=consul,component=server" in line
               for line in said), said  # fmt: skip
    api.sim.forbidden.clear()
    assert _claim(c)["metadata"]["name"] == "data-consul-consul-server-0"  # left, as the line says


def test_a_server_volume_pending_during_the_install_is_named_with_its_events_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks pass (a default class, its driver registered) but the driver cannot create volumes (its IAM
    role is missing): helm's "context deadline exceeded" comes with the claim and why it is Pending."""
    monkeypatch.delenv("EH_ENTRYPOINTS", raising=False)
    with FakeApiServer(SimTimings(helm_wait_cap_s=3.0)) as server:
        fake_tools(server, tmp_path, monkeypatch)
        _new_eks(server, tmp_path, ebs_csi_addon=True, addon_default_class=True)
        server.sim.csi_broken["ebs.csi.aws.com"] = (
            "rpc error: code = Internal desc = Could not create volume: UnauthorizedOperation: You are not "
            "authorized to perform this operation."
        )
        b = _backend(server, tmp_path, install_consul=True)
        with pytest.raises(
            BackendError,
            match=r"^`helm upgrade --install` failed \(exit 1\): Error: INSTALLATION FAILED: context deadline "
            r"exceeded; the Consul server cannot start: PersistentVolumeClaim consul/data-consul-consul-server-0 is "
            r'still Pending \(ProvisioningFailed: failed to provision volume with StorageClass "ebs-csi-default-sc": '
            r"rpc error: code = Internal desc = Could not create volume: UnauthorizedOperation: .*\)$",
        ):
            b.up(rendered(tmp_path))


def test_an_existing_consul_is_checked_before_anything_changes(
    api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EH_ENTRYPOINTS", raising=False)
    values = rendered(tmp_path / "r").helm_values
    cases = [
        ({}, r"no Consul found \(no pod labelled app=consul, component=server\).*--install-consul"),
        ({**values, "global": {**values["global"], "image": "hashicorp/consul:1.14.4"}}, r"Consul '1.14.4' .* too old"),
        ({**values, "connectInject": {"enabled": False}}, r"no Ready connect-injector: connect-inject must be on"),
    ]
    for i, (consul, message) in enumerate(cases):
        (tmp_path / f"c{i}").mkdir()
        with FakeApiServer() as server:
            _cluster(server, tmp_path / f"c{i}", consul=consul)
            before = _mutations(server)
            b = _backend(server, tmp_path / f"c{i}")
            with pytest.raises(BackendError, match=message):
                b.up(rendered(tmp_path / f"c{i}"))
            assert _mutations(server) == before, message


def test_an_operators_consul_with_the_charts_transparent_proxy_default_still_serves_every_zones_shop(
    api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The nightly's default path: the operator's Consul as `helm install` of the chart leaves it with no values,
    so transparent proxy is on for every injected pod (consul-k8s v1.9.11 connectInject.transparentProxy.
    defaultEnabled: true); the harness's own values, which turn it off, are not applied there. With it on, a
    user's plain HTTP through a zone's load balancer to a frontend's port 80 lands on Envoy's mTLS listener and
    is closed, while every pod is Ready. The rendered pods turn it off each (the pod annotation wins over the
    namespace label and the default), so every zone's shop answers."""
    from harness.chaos.probes import _shop_status
    from harness.contract import names
    from harness.render import naming
    from harness.topology.model import load_topology

    for k in ("EH_ENTRYPOINTS", "EH_ALLOW_CONTEXTS", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE", "CONSUL_CACERT"):
        monkeypatch.delenv(k, raising=False)
    fake_tools(api, tmp_path, monkeypatch)
    c = _cluster(api, tmp_path, consul={})
    api.install_consul({})  # the chart's defaults
    assert wait_until(lambda: bool(c.find_consul()) and c.find_consul().servers_ready == 1, 60)  # type: ignore[union-attr]
    assert c.find_consul().tproxy_default is True  # type: ignore[union-attr]
    t = load_topology(REPO / "fixtures" / "topology.yaml")
    urls = {}
    for z in t.zones:  # the operator's per-zone load balancers in front of the entry Services `up` creates
        port = api.sim.call(lambda z=z: api.sim.expose(naming.namespace(t, z), f"entry-{t.short(z)}"))
        urls[z.name] = f"http://127.0.0.1:{port}"
    b = _backend(api, tmp_path, entrypoints=[f"{z}={u}" for z, u in urls.items()])
    said: list[str] = []
    b.up(rendered(tmp_path), progress=said.append)
    try:
        with httpx.Client(timeout=5) as client:
            assert {z: _shop_status(u, client) for z, u in urls.items()} == dict.fromkeys(urls, 200)
        assert api.sim.tproxy_closed == []
        meshed = [p for p in c.pods() if (p["metadata"].get("annotations") or {}).get(names.ANN_INJECT) == "true"]
        assert meshed and [p["metadata"]["name"] for p in meshed if api.sim.tproxy_on(p)] == []
        assert any("transparent proxy on by default, off on the harness's pods" in line for line in said), said
        # the chart's defaults give Envoy no flush interval (10 s); each pod's annotation gives it the verdict's
        flushes = {envoy_flush_ms(_dataplane(p)["args"]) for p in meshed}
        assert flushes == {names.ACCESS_LOG_FLUSH_MS}, flushes
    finally:
        b.down()


def _dataplane(pod: dict[str, Any]) -> dict[str, Any]:
    from harness.contract import names

    return next(c for c in pod["spec"]["containers"] if c["name"] == names.DATAPLANE_CONTAINER)


@pytest.mark.parametrize(
    ("consul", "strip", "message"),
    [
        ({}, "consul.hashicorp.com/envoy-extra-args",
         r"Envoy flushes its access log every 10000 ms, the verdict reads it at 1000 ms"),
        ({"connectInject": {"dataplaneAsSidecarInitContainer": {"defaultEnabled": True}}},
         "consul.hashicorp.com/enable-consul-dataplane-as-sidecar", r"consul-dataplane is an init container"),
        ({"connectInject": {"dataplaneAsSidecarInitContainer": {"defaultEnabled": True}}}, None, None),
    ],
    ids=["flush-not-honoured", "dataplane-as-init-container", "pinned-on-a-sidecar-default"],
)  # fmt: skip
def test_up_refuses_sidecars_the_verdict_cannot_read_naming_the_pods(
    api: FakeApiServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    consul: dict[str, Any],
    strip: str | None,
    message: str | None,
) -> None:
    """An operator's Consul keeps its own defaults: Envoy's 10 s access-log flush (no envoyExtraArgs), and maybe
    consul-dataplane as an init container (connectInject.dataplaneAsSidecarInitContainer.defaultEnabled). The
    rendered pods pin both; an injector that did not honour the annotation (here: the annotation left out) would
    leave sidecars whose logs the verdict cannot read as it assumes (a killed sidecar's last 10 s missing; no log
    followed at all), so `up` says which pods, before any traffic. Pinned, the same Consul passes."""
    for k in ("EH_ENTRYPOINTS", "EH_ALLOW_CONTEXTS", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE", "CONSUL_CACERT"):
        monkeypatch.delenv(k, raising=False)
    fake_tools(api, tmp_path, monkeypatch)
    c = _cluster(api, tmp_path, consul={})
    api.install_consul(consul)
    assert wait_until(lambda: bool(c.find_consul()) and c.find_consul().servers_ready == 1, 60)  # type: ignore[union-attr]
    m = rendered(tmp_path)
    if strip is not None:
        for o in m.objects:
            if o["kind"] == "Deployment":
                o["spec"]["template"]["metadata"].get("annotations", {}).pop(strip, None)
    b = _backend(api, tmp_path)
    try:
        if message is None:
            b.up(m)
            return
        with pytest.raises(BackendError, match=r"the mesh's sidecars cannot be read as the verdict needs: hashicups"):
            b.up(m)
        with pytest.raises(BackendError, match=message):
            b._require_readable_sidecars(
                {str(o["metadata"]["namespace"]) for o in m.objects if o["kind"] == "Deployment"}
            )
    finally:
        b.down()


def test_the_flush_interval_is_read_from_the_envoy_arguments_after_the_separator() -> None:
    assert envoy_flush_ms(["-addresses", "x", "--", "--file-flush-interval-msec", "1000"]) == 1000
    assert envoy_flush_ms(["--", "--log-level", "debug", "--file-flush-interval-msec=250"]) == 250
    assert envoy_flush_ms(["-addresses", "x"]) == 10_000  # Envoy's default
    assert envoy_flush_ms(["--file-flush-interval-msec", "1000"]) == 10_000  # a consul-dataplane flag, not Envoy's


# -- the cluster's Kubernetes version against the chart's supported range ------------------------------------


def test_a_kubernetes_outside_the_charts_range_is_said_in_one_line(
    api: FakeApiServer, eks: KubeCluster, tmp_path: Path
) -> None:
    """consul-k8s 1.9.11 supports Kubernetes 1.30-1.34. A nightly against an EKS 1.35 cluster may still want to
    run, but the run must say, before anything changes, that it is outside what the chart was tested on."""
    api.sim.server_version = {"major": "1", "minor": "35", "gitVersion": "v1.35.2-eks-3025e55"}
    said: list[str] = []
    b = _backend(api, tmp_path)
    b.up(rendered(tmp_path), progress=said.append)
    warned = [line for line in said if "Kubernetes 1.35" in line]
    assert warned == [
        "WARNING: context eks-nightly runs Kubernetes 1.35 (v1.35.2-eks-3025e55), outside 1.30-1.34, the range "
        "consul-k8s chart 1.9.11 supports: results may reflect an untested combination"
    ]
    assert said.index(warned[0]) < next(i for i, line in enumerate(said) if line.startswith("applied "))
    assert b.cluster_warnings() == [warned[0].removeprefix("WARNING: ")]  # what preflight.json carries
    api.sim.server_version = {"major": "1", "minor": "34", "gitVersion": "v1.34.4-eks-3025e55"}
    assert b.cluster_warnings() == []  # asked anew: an upgrade (or downgrade) between up and preflight shows
    b.close()


# -- pods that no node of their zone takes ------------------------------------------------------


def _node_patch(c: KubeCluster, name: str, body: dict[str, Any]) -> None:
    c.request("PATCH", f"/api/v1/nodes/{name}", body=body, content_type="application/merge-patch+json")


def test_up_refuses_workloads_no_node_of_their_zone_takes_before_anything_changes(
    api: FakeApiServer, eks: KubeCluster, tmp_path: Path
) -> None:
    """A Local Zone node group tainted by its operator (eksctl `taints:`, a managed node group's taints), a
    zone whose nodes are all cordoned or NotReady: the zone's pods would stay Pending, and `up` used to apply
    everything and wait its whole ready timeout (15 min on the nightly), then say only "0/1 ready"."""
    _node_patch(eks, NODE[LAX], {"spec": {"taints": [{"key": "example.com/edge", "value": "true",
                                                     "effect": "NoSchedule"}]}})  # fmt: skip
    phx1, phx2 = EKS_NODES[4]["metadata"]["name"], EKS_NODES[5]["metadata"]["name"]
    _node_patch(eks, phx1, {"spec": {"unschedulable": True}})
    # what the node lifecycle controller leaves on a node whose kubelet stopped posting status
    _node_patch(eks, phx2, {"spec": {"taints": [{"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"}]},
                            "status": {"conditions": [{"type": "Ready", "status": "Unknown",
                                                       "reason": "NodeStatusUnknown"}]}})  # fmt: skip
    before = _mutations(api)
    b = _backend(api, tmp_path, ready_timeout_s=20)
    with pytest.raises(BackendError) as err:
        b.up(rendered(tmp_path))
    msg = str(err.value)
    assert msg.startswith("context eks-nightly: no node takes the pods of ")
    assert (
        f"zone {LAX} (frontend, product-api, public-api): {NODE[LAX]} has taint example.com/edge=true:NoSchedule, "
        f"which they do not tolerate (they tolerate edge-harness.io/edge-zone={LAX}:NoSchedule)" in msg
    )
    assert f"zone {PHX} (frontend, product-api, public-api): {phx1} is cordoned; {phx2} is not Ready" in msg
    assert LAS not in msg and "us-west-2a" not in msg
    assert "\n" not in msg
    assert _mutations(api) == before  # refused before anything changed
    b.close()


def test_a_deployment_left_pending_says_why_when_up_gives_up(
    api: FakeApiServer, eks: KubeCluster, tmp_path: Path
) -> None:
    """A pod the nodes cannot hold after all (the node went NotReady after the check, too little CPU on a
    Local Zone's small instance): the timeout names the scheduler's own reason, not only "0/1 ready"."""
    b = _backend(api, tmp_path, ready_timeout_s=3)
    m = rendered(tmp_path)
    b._require_placement = lambda _m: None  # type: ignore[method-assign]  # as if the node changed after the check
    _node_patch(eks, NODE[LAS], {"spec": {"taints": [{"key": "example.com/edge", "value": "true",
                                                     "effect": "NoSchedule"}]}})  # fmt: skip
    with pytest.raises(BackendError) as err:
        b.up(m)
    msg = str(err.value)
    assert "hashicups-las-1a/frontend-las-1a 0/1 ready" in msg
    assert "(Pending: 0/8 nodes are available:" in msg and "untolerated taint {example.com/edge: true}" in msg
    b.down()


# -- finding 4: mesh-wide config entries ---------------------------------------------------


THEIR_PROXY_DEFAULTS: dict[str, Any] = {
    "apiVersion": "consul.hashicorp.com/v1alpha1",
    "kind": "ProxyDefaults",
    "metadata": {"name": "global", "namespace": "platform"},
    "spec": {"config": {"protocol": "tcp"}, "meshGateway": {"mode": "local"}},
}
"""Another team's mesh-wide defaults, already in the cluster before the run."""


def _taken_over(api: FakeApiServer, eks: KubeCluster, tmp_path: Path) -> ExistingBackend:
    """A backend that took over THEIR_PROXY_DEFAULTS (--own-mesh-defaults) and is up."""
    api.seed(eks, THEIR_PROXY_DEFAULTS)
    owner = _backend(api, tmp_path, own_mesh_defaults=True)
    owner.up(rendered(tmp_path))
    return owner


def _proxy_defaults(c: KubeCluster) -> list[dict[str, Any]]:
    return list((c.request("GET", "/apis/consul.hashicorp.com/v1alpha1/proxydefaults") or {}).get("items") or [])


def test_absent_proxy_defaults_is_created_without_a_mesh_protocol_and_removed_on_down(
    api: FakeApiServer, eks: KubeCluster, tmp_path: Path
) -> None:
    b = _backend(api, tmp_path)
    b.up(rendered(tmp_path))
    (pd,) = _proxy_defaults(eks)
    assert pd["spec"]["accessLogs"]["enabled"] is True
    assert "protocol" not in (pd["spec"].get("config") or {})  # other teams' services keep Consul's tcp default
    assert all(s.synced for s in b.config_entry_status())
    b.down()
    assert wait_until(lambda: _proxy_defaults(eks) == [], 60)


def test_someone_elses_proxy_defaults_is_never_changed_unless_told(
    api: FakeApiServer, eks: KubeCluster, tmp_path: Path
) -> None:
    theirs = THEIR_PROXY_DEFAULTS
    api.seed(eks, theirs)
    before = _mutations(api)
    b = _backend(api, tmp_path)
    with pytest.raises(BackendError, match=r"^ProxyDefaults platform/global exists and was not created by this run.*"
                                           r"--own-mesh-defaults"):  # fmt: skip
        b.up(rendered(tmp_path))
    assert _mutations(api) == before  # refused before anything was applied

    owner = _backend(api, tmp_path, own_mesh_defaults=True)
    owner.up(rendered(tmp_path))
    (pd,) = _proxy_defaults(eks)
    assert pd["metadata"]["namespace"] == "platform" and pd["spec"]["accessLogs"]["enabled"] is True
    owner.down()
    (pd,) = _proxy_defaults(eks)
    assert pd["spec"] == theirs["spec"]  # restored as it was (a PUT over the live resourceVersion)


def _their_logs(access_logs: dict[str, Any]) -> dict[str, Any]:
    """THEIR_PROXY_DEFAULTS with the operator's own `accessLogs`."""
    theirs = json.loads(json.dumps(THEIR_PROXY_DEFAULTS))
    theirs["spec"]["accessLogs"] = access_logs
    return theirs


@pytest.mark.parametrize(
    "access_logs",
    [
        # HashiCorp's minimal setup: no format given, so Consul writes its default JSON format (agent/xds/accesslogs
        # defaultJSONFormat), whose keys are ACCESS_LOG_FIELDS', to Envoy's stdout
        {"enabled": True},
        {"enabled": True, "type": "stdout"},
        # consul-dataplane passes Envoy's stderr to its own, and the pod log API returns both streams
        {"enabled": True, "type": "stderr"},
        # only the logs of connections no listener filter chain matched (Envoy's NR), not the requests' own
        {"enabled": True, "disableListenerLogs": True},
        {"enabled": True, "jsonFormat": json.dumps(ACCESS_LOG_FIELDS, indent=2)},
        {"enabled": True, "jsonFormat": json.dumps({**ACCESS_LOG_FIELDS, "start_time": "%START_TIME(%s.%3f)%"})},
    ],
    ids=["minimal", "stdout", "stderr", "no-listener-logs", "our-json", "epoch-start-time"],
)
def test_an_operators_proxy_defaults_whose_logs_reach_the_container_log_is_kept(
    api: FakeApiServer, eks: KubeCluster, tmp_path: Path, access_logs: dict[str, Any]
) -> None:
    """The EKS nightly never passes --own-mesh-defaults: an operator's ProxyDefaults with Consul's documented
    minimal `accessLogs: {enabled: true}` used to be refused on first contact, as if it had no JSON format."""
    theirs = _their_logs(access_logs)
    api.seed(eks, theirs)
    b = _backend(api, tmp_path)
    m = rendered(tmp_path)
    plan = b.plan_mesh_defaults(m)
    assert (plan.keep, plan.take_over) == (["ProxyDefaults platform/global"], [])
    assert not [o for o in plan.create if o["kind"] == "ProxyDefaults"]
    b.up(m)
    (pd,) = _proxy_defaults(eks)
    assert pd["spec"] == theirs["spec"]  # used as it is
    b.down()
    (pd,) = _proxy_defaults(eks)
    assert pd["spec"] == theirs["spec"]  # and not deleted: the run did not create it


@pytest.mark.parametrize(
    ("access_logs", "why"),
    [
        # Envoy writes them to that file inside the sidecar: no line ever reaches `kubectl logs`
        ({"enabled": True, "type": "file", "path": "/var/log/envoy/access.log"}, r"accessLogs\.type is file"),
        (
            {"enabled": True, "type": "file", "path": "/tmp/a.log", "jsonFormat": json.dumps(ACCESS_LOG_FIELDS)},
            r"accessLogs\.type is file",
        ),
        ({"enabled": True, "textFormat": "[%START_TIME%] %RESPONSE_CODE% %UPSTREAM_HOST%"}, r"accessLogs\.textFormat"),
        ({"enabled": False}, r"accessLogs\.enabled"),
        ({"type": "stdout"}, r"accessLogs\.enabled"),
        (
            {"enabled": True, "jsonFormat": '{"start_time": "%START_TIME%", "response_code": "%RESPONSE_CODE%"}'},
            r"accessLogs\.jsonFormat lacks upstream_host, upstream_cluster",
        ),
        (
            {"enabled": True, "jsonFormat": json.dumps({**ACCESS_LOG_FIELDS, "upstream_host": "%UPSTREAM_CLUSTER%"})},
            r"accessLogs\.jsonFormat.*upstream_host",
        ),
    ],
    ids=["file", "file-with-our-json", "text", "disabled", "not-enabled", "json-without-upstream", "json-other-op"],
)
def test_an_operators_proxy_defaults_whose_logs_the_harness_cannot_read_is_refused_naming_the_field(
    api: FakeApiServer, eks: KubeCluster, tmp_path: Path, access_logs: dict[str, Any], why: str
) -> None:
    """A file logger used to be kept (the check ignored `type`), after which no access-log line was collected."""
    api.seed(eks, _their_logs(access_logs))
    before = _mutations(api)
    with pytest.raises(BackendError, match=rf"^ProxyDefaults platform/global exists and was not created by this run.*"
                                           rf"{why}.*--own-mesh-defaults"):  # fmt: skip
        _backend(api, tmp_path).up(rendered(tmp_path))
    assert _mutations(api) == before  # refused before anything was applied


def test_the_operators_consul_namespace_is_left_as_it_was(api: FakeApiServer, eks: KubeCluster, tmp_path: Path) -> None:
    """The rendered set has the Consul release namespace (for --install-consul). Against the operator's Consul,
    `up` used to server-side apply it over theirs: their namespace took the harness's managed-by label (and its
    field ownership), and `down`, which deletes only what it created, never gave it back."""
    path = "/api/v1/namespaces/consul"
    before = api.sim.call(lambda: api.sim.get("v1", "namespaces", None, "consul"))
    assert before is not None  # the operator's Consul lives there
    b = _backend(api, tmp_path)
    b.up(rendered(tmp_path))
    b.down()
    assert not [(m, p) for m, p in _mutations(api) if p.split("?")[0] == path]
    after = api.sim.call(lambda: api.sim.get("v1", "namespaces", None, "consul"))
    assert after is not None and after["metadata"].get("labels") == before["metadata"].get("labels")


def test_a_second_down_finds_nothing_to_do(api: FakeApiServer, eks: KubeCluster, tmp_path: Path) -> None:
    """The nightly's clean-up step runs `down` after every run (.github/workflows/nightly-eks.yml): after a
    run that took itself down, it must change nothing."""
    b = _backend(api, tmp_path)
    b.up(rendered(tmp_path))
    b.down()
    before = _mutations(api)
    _backend(api, tmp_path).down()  # a new process, as the workflow's next step is
    assert _mutations(api) == before


@pytest.mark.parametrize("writes", [1, 99], ids=["once", "always"])
def test_a_restore_reads_again_when_the_entry_changed_under_it(
    api: FakeApiServer, eks: KubeCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writes: int
) -> None:
    """Someone writes between down's read and its replace (Consul's controller updating the status): 409, read again."""
    theirs = THEIR_PROXY_DEFAULTS
    owner = _taken_over(api, eks, tmp_path)
    url = "/apis/consul.hashicorp.com/v1alpha1/namespaces/platform/proxydefaults/global"
    real = owner.cluster.request
    left = [writes]

    def racing(method: str, path: str, **kw: Any) -> Any:
        if method == "PUT" and path == url and left[0] > 0:
            left[0] -= 1
            eks.request("PATCH", url, body={"metadata": {"labels": {"touched": str(left[0])}}},
                        content_type="application/merge-patch+json")  # fmt: skip
        return real(method, path, **kw)

    monkeypatch.setattr(owner.cluster, "request", racing)
    if writes > 5:
        with pytest.raises(BackendError, match=r"^ProxyDefaults platform/global not restored: .*changed under every "
                                               r"one of 5 restores.*kept in .* for the next down"):  # fmt: skip
            owner.down()
        # the rest of down was done all the same: the run's namespaces are gone
        assert not [
            n
            for n in eks.request("GET", "/api/v1/namespaces")["items"]
            if n["metadata"]["name"].startswith("hashicups") and not n["metadata"].get("deletionTimestamp")
        ]
        monkeypatch.setattr(owner.cluster, "request", real)
        again = _backend(api, tmp_path, own_mesh_defaults=True)  # the next down, as the nightly's clean-up step
        again.down()
        assert left == [writes - 5]  # five reads, five replaces refused
    else:
        owner.down()
        assert left == [0]
    (pd,) = _proxy_defaults(eks)
    assert pd["spec"] == theirs["spec"]
    assert not owner._state_file.exists()  # nothing left for another down


def test_a_taken_over_proxy_defaults_deleted_meanwhile_is_recreated_as_it_was(
    api: FakeApiServer, eks: KubeCluster, tmp_path: Path
) -> None:
    theirs = THEIR_PROXY_DEFAULTS
    owner = _taken_over(api, eks, tmp_path)
    eks.request("DELETE", "/apis/consul.hashicorp.com/v1alpha1/namespaces/platform/proxydefaults/global")
    assert wait_until(lambda: _proxy_defaults(eks) == [], 30)  # Consul's controller let it go
    owner.down()
    (pd,) = _proxy_defaults(eks)
    assert pd["metadata"]["namespace"] == "platform" and pd["spec"] == theirs["spec"]


def test_a_usable_proxy_defaults_is_kept_as_it_is(api: FakeApiServer, eks: KubeCluster, tmp_path: Path) -> None:
    m = rendered(tmp_path)
    theirs = {**next(o for o in m.consul_objects if o["kind"] == "ProxyDefaults")}
    theirs = {**theirs, "metadata": {"name": "global", "namespace": "platform"}}
    api.seed(eks, theirs)
    b = _backend(api, tmp_path)
    progress: list[str] = []
    b.progress = progress.append
    b.up(m)
    assert "ProxyDefaults platform/global: kept as it is (not created by this run; its access logs are usable)" in (
        progress
    )
    assert [p["metadata"]["namespace"] for p in _proxy_defaults(eks)] == ["platform"]
    b.down()
    assert [p["metadata"]["namespace"] for p in _proxy_defaults(eks)] == ["platform"]


# -- findings 3 and 5: faults EKS cannot do are refused before anything ------------------------


def test_service_link_faults_are_refused_before_anything_is_recorded(
    api: FakeApiServer, eks: KubeCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.chaos import actions, check_capabilities

    b = _backend(api, tmp_path, ("eks-nightly",), manifests=rendered(tmp_path))
    assert "set_link" not in b.capabilities()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.setenv("EH_RUN_DIR", str(run_dir))
    monkeypatch.setattr(actions, "_backend", lambda _cfg: b)
    with pytest.raises(BackendError, match=r"cannot set_link: a real service link's latency cannot be changed"):
        actions.degrade_link(LAX, 150, duration_s=0)
    assert not (run_dir / "chaos.jsonl").exists()  # no inject that "never recovers"
    b.clear_link(LAX)  # the rollback is harmless
    with pytest.raises(
        InputError,
        match=r"edge-outage.json: method\[2\]\.provider\.func: degrade_link: context eks-\w+ cannot set_link",
    ):
        check_capabilities(REPO / "experiments" / "edge-outage.json", b)
    check_capabilities(REPO / "experiments" / "eks-edge.json", b)  # the nightly's edge faults are all possible


def test_e2e_with_a_fault_eks_cannot_do_is_refused_before_anything_changes(
    api: FakeApiServer, eks: KubeCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from harness.cli import main

    kc = api.write_kubeconfig(tmp_path / "kubeconfig", "eks-nightly")
    monkeypatch.chdir(tmp_path)
    before = _mutations(api)
    args = ["e2e", "--backend", "existing", "--context", "eks-nightly", "--kubeconfig", str(kc)]
    args += ["--allow-context", "eks-nightly", *[f"--entrypoint={z}={u}" for z, u in ENTRY.items()]]
    assert main([*args, "--experiment", str(REPO / "experiments" / "edge-outage.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "edge-outage.json: method[2].provider.func: degrade_link:" in err[0]
    assert "cannot set_link" in err[0]
    assert _mutations(api) == before  # nothing applied, nothing injected


def test_partition_needs_a_cni_that_enforces_network_policy(
    api: FakeApiServer, eks: KubeCluster, tmp_path: Path
) -> None:
    api.sim.netpol_enforced = False  # e.g. EKS VPC CNI without its network policy agent
    b = _backend(api, tmp_path, ("eks-nightly",), manifests=rendered(tmp_path))
    assert b.can("partition_zone") and b.can("kill_node")  # for no zone in particular: the allow-list only
    with pytest.raises(
        BackendError,
        match=rf"cannot partition_zone {LAX}: NetworkPolicy is not enforced in {LAX}: a probe connection to a "
        rf"probe server on node {NODE[LAX]} went through a deny-all policy",
    ):
        b.partition_zone(LAX)
    assert wait_until(lambda: not _probe_namespaces(api), 60)  # the probe cleaned up
    assert not any(p.endswith("/networkpolicies") and m == "POST" and "hashicups" in p for m, p in _mutations(api))

    api.sim.netpol_enforced = True
    b2 = ExistingBackend(
        "eks-nightly", b.kubeconfig, ("eks-nightly",), workdir=tmp_path / "wd2", execute=True,
        entrypoints=[f"{z}={u}" for z, u in ENTRY.items()],
    )  # fmt: skip
    b2.ready_poll_s = 0.1
    assert b2.network_policy_enforced(LAX) == (
        True,
        f"NetworkPolicy enforced in {LAX}: a connection to a probe server on node {NODE[LAX]} was refused by a "
        "deny-all policy",
    )
    b2.up(rendered(tmp_path))  # a partition needs the run's steady state first
    b2.partition_zone(LAX)
    meth, path, body = api.writes()[-1]
    assert (meth, path) == ("POST", "/apis/networking.k8s.io/v1/namespaces/hashicups-lax-1a/networkpolicies")
    assert body["metadata"]["name"] == PARTITION_POLICY
    assert body["spec"]["podSelector"] == {} and body["spec"]["policyTypes"] == ["Ingress", "Egress"]
    b2.heal_zone(LAX)
    assert api.writes()[-1][:2] == (
        "DELETE",
        f"/apis/networking.k8s.io/v1/namespaces/hashicups-lax-1a/networkpolicies/{PARTITION_POLICY}",
    )
    with pytest.raises(BackendError, match="us-west-2a is not an edge zone"):
        b2.partition_zone("us-west-2a")
    b2.close()


def _probe_namespaces(api: FakeApiServer) -> list[str]:
    """The NetworkPolicy probe's namespaces still there (each is deleted when its probe ends)."""
    names = api.sim.call(lambda: [o["metadata"]["name"] for o in api.sim.items("v1", "namespaces")])
    return [n for n in names if n.startswith("eh-netpol-probe-")]


def _probe_pod_posts(api: FakeApiServer) -> list[tuple[str, dict[str, Any]]]:
    """(namespace, body) of every pod the NetworkPolicy probe created, in order."""
    return [
        (p.split("/")[4], d)
        for m, p, d in api.writes()
        if m == "POST" and p.startswith("/api/v1/namespaces/eh-netpol-probe-") and p.endswith("/pods")
    ]


def _partition_experiment(tmp_path: Path, zone: str) -> Path:
    """service-link.json's partition alone (the link's latency is no fault EKS can do), of `zone`."""
    data = json.loads((REPO / "experiments" / "service-link.json").read_text(encoding="utf-8"))
    data["configuration"] = {**data["configuration"], "zone": zone}
    data["method"] = [a for a in data["method"] if a["provider"]["func"] == "partition_zone"]
    data["rollbacks"] = [a for a in data["rollbacks"] if a["provider"]["func"] == "heal_zone"]
    out = tmp_path / f"partition-{zone}.json"
    out.write_text(json.dumps(data), encoding="utf-8")
    return out


@pytest.mark.parametrize("lz_enforces", [True, False], ids=["everywhere", "not-on-the-local-zone"])
def test_partition_probe_runs_on_the_nodes_of_the_zone_it_partitions(
    api: FakeApiServer, eks: KubeCluster, tmp_path: Path, lz_enforces: bool
) -> None:
    """EKS enforces NetworkPolicy per node (the VPC CNI's network policy agent on each): a Local Zone node group
    whose agent is off, or on an AMI it does not support, lets a partition through while the Region's nodes
    enforce. Before, the one probe per context ran wherever the scheduler put it (a Region node here), passed,
    and the Local Zone was "partitioned" with nothing cut; now the probe runs on the zone's own nodes, once per
    zone asked for, and such a zone is refused while planning, in one line naming it and the node."""
    from harness.chaos import plan_run

    if not lz_enforces:
        api.sim.netpol_unenforced_nodes = {NODE[LAX]}
    b = _backend(api, tmp_path, ("eks-nightly",), execute=True)
    m = rendered(tmp_path)
    b.up(m)
    exp = _partition_experiment(tmp_path, LAX)
    if lz_enforces:
        plan_run([exp], m.topology, None, require=b.require_capability)
    else:
        with pytest.raises(InputError) as refused:
            plan_run([exp], m.topology, None, require=b.require_capability)
        line = str(refused.value)
        assert "\n" not in line
        assert (
            f"partition_zone: context eks-nightly cannot partition_zone {LAX}: NetworkPolicy is not enforced in "
            f"{LAX}: a probe connection to a probe server on node {NODE[LAX]} went through a deny-all policy" in line
        )
    # the probe's pods went where the zone's pods go: its nodes, its edge taint tolerated
    posts = _probe_pod_posts(api)
    assert len({ns for ns, _ in posts}) == 1  # one probe, for the one zone a partition was planned in
    assert posts and all(d["spec"]["affinity"] == zone_probe_placement(LAX)["affinity"] for _, d in posts)
    assert wait_until(lambda: not _probe_namespaces(api), 60)
    before = _mutations(api)
    if lz_enforces:
        b.partition_zone(LAX)
        assert api.writes()[-1][1] == "/apis/networking.k8s.io/v1/namespaces/hashicups-lax-1a/networkpolicies"
        b.heal_zone(LAX)
    else:
        with pytest.raises(BackendError, match=rf"^context eks-nightly cannot partition_zone {LAX}: NetworkPolicy is "
                           rf"not enforced in {LAX}: .* on node {NODE[LAX]} went through"):  # fmt: skip
            b.partition_zone(LAX)
        assert _mutations(api) == before  # refused from the cache: no second probe, nothing injected
    assert len(_probe_pod_posts(api)) == len(posts)  # the zone's answer was cached
    # another Local Zone, whose nodes enforce, is probed on its own nodes when (and only when) it is asked about
    ok, detail = b.network_policy_enforced(LAS)
    assert ok and f"on node {NODE[LAS]} was refused" in detail
    las = _probe_pod_posts(api)[len(posts) :]
    assert las and all(d["spec"]["affinity"] == zone_probe_placement(LAS)["affinity"] for _, d in las)
    b.close()


def test_probe_placement_is_the_zone_workloads_placement(tmp_path: Path) -> None:
    """The probe tests the nodes the zone's pods run on only if it is placed as they are (render's Deployments)."""
    m = rendered(tmp_path)
    for o in m.objects:
        if o["kind"] != "Deployment":
            continue
        spec = o["spec"]["template"]["spec"]
        zone = o["spec"]["template"]["metadata"]["labels"]["edge-harness.io/zone"]
        if m.topology.zone(zone).is_edge:
            assert {k: spec.get(k) for k in ("affinity", "tolerations")} == zone_probe_placement(zone), o["metadata"]


def test_destructive_chaos_refused_unless_allow_listed(
    api: FakeApiServer, eks: KubeCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = _backend(api, tmp_path, ("staging",), manifests=rendered(tmp_path))
    assert b.capabilities() == {"kill_pod", "set_pod_unready"}
    before = _mutations(api)
    for call in (
        lambda: b.kill_node(NODE[LAX]),
        lambda: b.zone_outage(LAX),
        lambda: b.partition_zone(LAX),
    ):
        with pytest.raises(BackendError, match=r"^refusing \w+ .* on context 'eks-nightly': destructive chaos needs"):
            call()
    assert _mutations(api) == before
    monkeypatch.setenv("EH_ALLOW_CONTEXTS", "other, eks-nightly")
    assert _backend(api, tmp_path).destructive_allowed


def test_node_kill_is_cordon_and_pod_deletion(api: FakeApiServer, eks: KubeCluster, tmp_path: Path) -> None:
    b = _backend(api, tmp_path, ("eks-nightly",), execute=True)
    b.up(rendered(tmp_path))
    phx1, phx2 = EKS_NODES[4]["metadata"]["name"], EKS_NODES[5]["metadata"]["name"]
    on = {n: [p["metadata"]["name"] for p in eks.pods() if p["spec"].get("nodeName") == n] for n in (phx1, phx2)}
    assert on[phx1] and on[phx2]  # the zone's pods are spread over its two nodes
    before = len(api.writes())
    b.zone_outage(PHX)
    w = [(m, p) for m, p, _d in api.writes()[before:] if "/pods/" in p or "/nodes/" in p]
    # both nodes cordoned before any pod dies, so no pod is rescheduled onto the sibling
    assert w[:2] == [("PATCH", f"/api/v1/nodes/{phx1}"), ("PATCH", f"/api/v1/nodes/{phx2}")]
    assert {p.rsplit("/", 1)[1] for m, p in w if m == "DELETE"} == set(on[phx1]) | set(on[phx2])
    # the replacements wait: every node of the zone is cordoned and the pods are pinned to it
    assert wait_until(lambda: all(p["status"]["phase"] == "Pending" for p in eks.pods("hashicups-phx-2a")))
    b.restore_zone(PHX)
    assert not any(n.unschedulable for n in eks.node_infos())
    assert wait_until(lambda: b.status().up, 60)  # the replacements ran once the nodes came back
    with pytest.raises(BackendError, match="no nodes in zone us-west-2-nowhere-1a"):
        b.restore_zone("us-west-2-nowhere-1a")
    b.close()


def _replace_instance(api: FakeApiServer, c: KubeCluster, old: str, ip: str) -> str:
    """What EKS does with an instance of a node group that goes (an ASG's health replacement, Karpenter's
    consolidation, a Spot interruption): the old Node object is deleted (cloud-node-lifecycle), and a new
    instance joins the zone under a name of its own (its private DNS name) with a new IP."""
    node = next(n for n in EKS_NODES if n["metadata"]["name"] == old)
    labels = node["metadata"]["labels"]
    new = eks_node(ip, labels["topology.kubernetes.io/zone"], labels["eks.amazonaws.com/nodegroup"])
    c.delete("v1", "Node", None, old)
    api.sim.call(lambda: api.sim.add_node(new["metadata"]["name"], dict(new["metadata"]["labels"]), ip=ip,
                                          cidr=new["spec"]["podCIDR"]))  # fmt: skip
    return str(new["metadata"]["name"])


def test_a_node_replaced_during_its_fault_is_restored_and_its_zone_recovers_on_the_new_one(
    api: FakeApiServer, eks: KubeCluster, tmp_path: Path
) -> None:
    """A node the harness cordoned is gone when the fault ends (EKS replaces instances, it never restarts
    them under the same name): there is no cordon left to undo. Uncordoning it got 404, the restore (and the
    experiment's rollback, and `down`) failed, and a zone outage's ledger entry for it outlived the run, so
    every later run found "faults never undone"."""
    b = _backend(api, tmp_path, ("eks-nightly",), execute=True)
    b.up(rendered(tmp_path))
    old = NODE[LAX]
    b.kill_node(old)
    new = _replace_instance(api, eks, old, "10.0.3.77")
    b.restore_node(old)
    assert b.ledger.entries() == []
    # the zone's pods run again, on the new node (status alone can be up before the replacements exist)
    assert wait_until(lambda: {(p.service, p.node) for p in b.inventory().pods(alive_only=True) if p.zone == LAX}
                      == {(s, new) for s in ("frontend", "public-api", "product-api")}, 60)  # fmt: skip
    assert wait_until(lambda: b.steady_state_problems() == [], 30)

    b.zone_outage(LAX)
    eks.delete("v1", "Node", None, new)  # gone, and its replacement not there yet when the zone is restored
    b.restore_zone(LAX)
    assert b.ledger.entries() == []
    _replace_instance(api, eks, old, "10.0.3.79")  # it joins uncordoned: nothing of the fault left
    assert wait_until(lambda: b.steady_state_problems() == [], 60)
    b.close()


# -- finding 6 and the rest ---------------------------------------------------------------


def test_pod_chaos_inventory_status_and_close(api: FakeApiServer, eks: KubeCluster, tmp_path: Path) -> None:
    b = _backend(api, tmp_path)
    b.up(rendered(tmp_path))
    inv = b.inventory()
    pa = next(p for p in inv.pods() if p.pod.startswith("product-api-lax-1a-"))
    assert pa.zone == LAX and pa.node == NODE[LAX] and pa.ip.startswith("10.0.3.") and inv.is_ready(pa.pod)
    assert b.set_pod_unready(LAX, "product-api") == [pa.pod]
    assert wait_until(lambda: not inv.is_ready(pa.pod))
    assert b.status().pods[pa.pod] == "Unready"
    assert b.set_pod_ready(LAX, "product-api") == [pa.pod]
    assert b.kill_pod(LAX, "product-api") == [pa.pod]
    assert wait_until(lambda: inv.get(pa.pod).ended is not None)  # type: ignore[union-attr]
    assert b.nodes()[NODE[LAX]] == LAX
    st = b.status()
    assert isinstance(st, Status) and "extra zones: us-west-2c" in st.detail
    threads = [t for t in threading.enumerate() if t.name == "eh-inventory-watch"]
    assert threads
    b.close()  # the chaos extension closes its backend: no watcher outlives it
    assert wait_until(lambda: not any(t.is_alive() for t in threads), 60)


def test_context_is_required_and_bad_context_is_clear(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="needs a kubeconfig context"):
        ExistingBackend("", None)
    kc = tmp_path / "kc"
    kc.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\ncurrent-context: ''\n")
    b = ExistingBackend("prod", kc, workdir=tmp_path)
    with pytest.raises(BackendError, match=f"kubeconfig {kc}: cannot use context prod"):
        _ = b.cluster
    with pytest.raises(BackendError, match="no manifests recorded"):
        b.manifests()


def test_from_options(tmp_path: Path) -> None:
    from harness.backends import BackendOptions

    kc = tmp_path / "kc"
    kc.write_text("contexts: [{name: eks-a, context: {user: u}}]\nusers: [{name: u, user: {token: x}}]\n")
    opts = BackendOptions(
        name="existing", context="eks-a", kubeconfig=str(kc), allow_contexts=["eks-a"], workdir=tmp_path,
        entrypoints={LAX: "http://x"}, install_consul=True, own_mesh_defaults=True,
    )  # fmt: skip
    b = ExistingBackend.from_options(opts)
    assert (b.context, b.destructive_allowed, b.workdir) == ("eks-a", True, tmp_path / "existing-eks-a")
    assert (b.install_consul, b.own_mesh_defaults, b.entry_flags) == (True, True, [f"{LAX}=http://x"])
    assert json.loads(opts.env()["EH_ENTRYPOINTS"]) == {LAX: "http://x"}  # the chaos process probes them too
    with pytest.raises(BackendError, match="needs a kubeconfig context"):
        ExistingBackend.from_options(BackendOptions(name="existing", workdir=tmp_path))
    # the poll interval: the backend's 2 s unless given (a simulated cluster's tests give less)
    assert b.ready_poll_s == 2.0 and not any("POLL" in k for k in opts.env())  # not handed to chaos processes
    opts.ready_poll_s = 0.1
    assert ExistingBackend.from_options(opts).ready_poll_s == 0.1


def test_eh_context_and_eh_kubeconfig_stand_in_for_the_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusal says "--context or EH_CONTEXT" and docs/environment.md lists both: the variable must work.

    Before, only a chaos process read it (`BackendOptions.from_env`); `harness status --backend existing`
    with EH_CONTEXT set (and the pytest plugin) answered "needs a kubeconfig context".
    """
    from harness import cli
    from harness.backends import BackendOptions

    kc = tmp_path / "kc"
    kc.write_text(
        "apiVersion: v1\nkind: Config\nclusters: []\nusers: []\ncurrent-context: ''\n"
        "contexts: [{name: eks-env, context: {cluster: gone}}, {name: eks-flag, context: {cluster: gone}}]\n"
    )
    monkeypatch.setenv("EH_CONTEXT", "eks-env")
    monkeypatch.setenv("EH_KUBECONFIG", str(kc))
    monkeypatch.chdir(tmp_path)
    b = ExistingBackend.from_options(BackendOptions(name="existing", workdir=tmp_path))
    assert (b.context, str(b.kubeconfig)) == ("eks-env", str(kc))
    flagged = ExistingBackend.from_options(BackendOptions(name="existing", context="eks-flag", workdir=tmp_path))
    assert flagged.context == "eks-flag"  # control: the flag wins over the variable
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        rc = cli.main(["status", "--backend", "existing", "--json"])
    assert rc == 3  # reached the cluster (it cannot be used), not refused for want of a context
    assert f"kubeconfig {kc}: cannot use context eks-env" in json.loads(out.getvalue())["detail"]
    monkeypatch.delenv("EH_CONTEXT")
    with pytest.raises(BackendError, match="needs a kubeconfig context"):  # control: neither given
        ExistingBackend.from_options(BackendOptions(name="existing", workdir=tmp_path))

"""Load a rendered directory: what every backend consumes.

Backends never call `render` themselves: they apply a directory, which may
have been rendered elsewhere, copied from a run, or edited by hand to try a
misconfiguration. So this loader reads the files as they are on disk and
only checks what a backend cannot work without (parsable YAML, objects with
apiVersion/kind/metadata.name, a valid topology). Every problem is an
`InputError` naming the file and the document/field, like topology errors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import InputError
from harness.render.layout import CONSUL_DIR, ENTRY_DIR, K8S_DIR, KIND_FILE, MANIFEST_FILE, TOPOLOGY_FILE, VALUES_FILE
from harness.topology.model import Edition, Topology, load_topology
from harness.topology.yamlload import safe_load, safe_load_all


@dataclass(frozen=True)
class Manifests:
    """A rendered directory, parsed. `objects[i]` came from `origins[i]` (`k8s/10-x.yaml#3`)."""

    root: Path
    topology: Topology
    kind_config: dict[str, Any]
    helm_values: dict[str, Any]
    objects: list[dict[str, Any]]
    meta: dict[str, Any]
    origins: list[str] = field(default_factory=list)
    # entry/<variant>.yaml -> objects: per-zone entry points, applied only by the backend of that
    # variant (kind.yaml: kind; cluster.yaml: existing). Not in `objects`: the local backend never sees them.
    entry: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def entry_objects(self, variant: str) -> list[dict[str, Any]]:
        """The per-zone entry objects of one variant (empty for a directory rendered without them)."""
        return list(self.entry.get(variant, []))

    @property
    def edition(self) -> Edition:
        return self.topology.edition

    def of_kind(self, *kinds: str) -> list[dict[str, Any]]:
        """Objects of the given kinds, in apply order."""
        return [o for o in self.objects if o["kind"] in kinds]

    @property
    def k8s_objects(self) -> list[dict[str, Any]]:
        return [o for o, src in zip(self.objects, self.origins, strict=True) if src.startswith(K8S_DIR + "/")]

    @property
    def consul_objects(self) -> list[dict[str, Any]]:
        return [o for o, src in zip(self.objects, self.origins, strict=True) if src.startswith(CONSUL_DIR + "/")]

    def origin(self, obj: dict[str, Any]) -> str:
        """`file#document-index` of an object (by identity), for error messages."""
        for o, src in zip(self.objects, self.origins, strict=True):
            if o is obj:
                return src
        raise KeyError("object not loaded from this directory")


def _read(path: Path, label: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(label, "", "no such file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise InputError(label, "", f"cannot read: {exc.__class__.__name__}") from None


def _yaml_error(label: str, exc: yaml.YAMLError, doc_index: int | None = None) -> InputError:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    if doc_index is not None:
        where = f"documents[{doc_index}]" + (f" ({where})" if where else "")
    problem = getattr(exc, "problem", None) or "invalid YAML"
    return InputError(label, where, f"YAML syntax error: {problem}")


def _load_mapping(path: Path, label: str) -> dict[str, Any]:
    try:
        data = safe_load(_read(path, label))
    except yaml.YAMLError as exc:
        raise _yaml_error(label, exc) from None
    if not isinstance(data, dict):
        raise InputError(label, "", f"expected a mapping at the top level, got {type(data).__name__}")
    return data


KNOWN_KINDS: dict[str, frozenset[str]] = {
    "v1": frozenset({"Namespace", "Service", "ServiceAccount", "ConfigMap", "Secret", "Pod", "Endpoints",
                     "PersistentVolumeClaim", "LimitRange", "ResourceQuota"}),
    "apps/v1": frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"}),
    "batch/v1": frozenset({"Job", "CronJob"}),
    "networking.k8s.io/v1": frozenset({"Ingress", "IngressClass", "NetworkPolicy"}),
    "policy/v1": frozenset({"PodDisruptionBudget"}),
    "autoscaling/v2": frozenset({"HorizontalPodAutoscaler"}),
    "rbac.authorization.k8s.io/v1": frozenset({"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}),
    "consul.hashicorp.com/v1alpha1": frozenset({
        "ProxyDefaults", "ServiceDefaults", "ServiceResolver", "ServiceRouter", "ServiceSplitter",
        "ServiceIntentions", "Mesh", "ExportedServices", "IngressGateway", "TerminatingGateway", "SamenessGroup",
        "JWTProvider", "ControlPlaneRequestLimit", "RouteAuthFilter", "GatewayPolicy",
    }),
}  # fmt: skip
"""Kinds a rendered directory may hold. Anything else (a typo, a CRD the cluster may not serve) is refused at
load, before a backend applies half the directory and fails at the API server on the rest."""


def _check_object(doc: Any, label: str, index: int) -> dict[str, Any]:
    where = f"documents[{index}]"
    if not isinstance(doc, dict):
        raise InputError(label, where, f"expected a Kubernetes object (mapping), got {type(doc).__name__}")
    for key in ("apiVersion", "kind"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            raise InputError(label, f"{where}.{key}", "required (a non-empty string)")
    if doc["kind"] not in KNOWN_KINDS.get(doc["apiVersion"], frozenset()):
        versions = sorted(v for v, kinds in KNOWN_KINDS.items() if doc["kind"] in kinds)
        hint = f" (it is {' or '.join(versions)})" if versions else ""
        raise InputError(
            label, f"{where}.kind", f"{doc['kind']} in {doc['apiVersion']} is not a kind the harness knows{hint}"
        )
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        raise InputError(label, f"{where}.metadata", "required (a mapping with name)")
    if not isinstance(meta.get("name"), str) or not meta["name"]:
        raise InputError(label, f"{where}.metadata.name", "required (a non-empty string)")
    return doc


def _load_objects(path: Path, label: str) -> list[tuple[dict[str, Any], str]]:
    """Documents of one multi-document file; empty documents (a stray `---`) are skipped."""
    text = _read(path, label)
    out: list[tuple[dict[str, Any], str]] = []
    index = 0
    try:
        for doc in safe_load_all(text):
            if doc is not None:
                out.append((_check_object(doc, label, index), f"{label}#{index}"))
            index += 1
    except yaml.YAMLError as exc:
        raise _yaml_error(label, exc, index) from None
    return out


def load(directory: Path | str) -> Manifests:
    """Parse a rendered directory (docs/CONTRACTS.md §2) as it is on disk."""
    root = Path(directory)
    if not root.is_dir():
        raise InputError(str(root), "", "no such directory (render one with `harness render --out DIR`)")

    def label(rel: str) -> str:
        return str(root / rel)

    topology = load_topology(root / TOPOLOGY_FILE)
    try:
        meta = json.loads(_read(root / MANIFEST_FILE, label(MANIFEST_FILE)))
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise InputError(label(MANIFEST_FILE), where, f"JSON syntax error: {exc.msg}") from None
    if not isinstance(meta, dict):
        raise InputError(label(MANIFEST_FILE), "", "expected a JSON object")
    if meta.get("edition") != topology.edition.value:
        raise InputError(
            label(MANIFEST_FILE),
            "edition",
            f"{meta.get('edition')!r} does not match {TOPOLOGY_FILE} edition {topology.edition.value!r}",
        )
    kind_config = _load_mapping(root / KIND_FILE, label(KIND_FILE))
    helm_values = _load_mapping(root / VALUES_FILE, label(VALUES_FILE))
    objects: list[dict[str, Any]] = []
    origins: list[str] = []
    for sub in (K8S_DIR, CONSUL_DIR):
        d = root / sub
        if not d.is_dir():
            raise InputError(label(sub), "", "no such directory")
        for path in sorted(d.glob("*.yaml")):
            for obj, src in _load_objects(path, label(f"{sub}/{path.name}")):
                objects.append(obj)
                origins.append(src.removeprefix(str(root) + "/"))
    entry: dict[str, list[dict[str, Any]]] = {}
    if (root / ENTRY_DIR).is_dir():
        for path in sorted((root / ENTRY_DIR).glob("*.yaml")):
            entry[path.name] = [obj for obj, _src in _load_objects(path, label(f"{ENTRY_DIR}/{path.name}"))]
    return Manifests(
        entry=entry,
        root=root,
        topology=topology,
        kind_config=kind_config,
        helm_values=helm_values,
        objects=objects,
        meta=meta,
        origins=origins,
    )

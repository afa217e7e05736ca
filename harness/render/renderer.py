"""The renderer proper: topology -> `Rendered` -> files on disk (docs/CONTRACTS.md §2).

Kept apart from the package's `__init__` so that the loader
(`harness.render.manifests`), which every backend imports, pulls in the file
layout only and never the renderer: a backend applies a directory, it does
not render one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.contract import names
from harness.errors import InputError
from harness.render import consul, entry, hashicups, helm, kind, yamlio
from harness.render.layout import CONSUL_DIR, ENTRY_DIR, K8S_DIR, KIND_FILE, MANIFEST_FILE, TOPOLOGY_FILE, VALUES_FILE
from harness.topology.model import Edition, Topology, dump_topology


@dataclass(frozen=True)
class Rendered:
    """Everything `render` produced, as objects; `files()` gives the directory's text."""

    topology: Topology  # with `edition` set to the rendered edition
    kind_config: dict[str, Any]
    helm_values: dict[str, Any]
    k8s: dict[str, list[dict[str, Any]]]  # file name under k8s/ -> objects
    consul: dict[str, list[dict[str, Any]]]  # file name under consul/ -> CRDs
    meta: dict[str, Any] = field(default_factory=dict)
    entry: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # file under entry/ -> objects

    @property
    def edition(self) -> Edition:
        return self.topology.edition

    @property
    def objects(self) -> list[dict[str, Any]]:
        """k8s objects then Consul CRDs, in apply order (same order `manifests.load` gives)."""
        return [o for name in sorted(self.k8s) for o in self.k8s[name]] + [
            o for name in sorted(self.consul) for o in self.consul[name]
        ]

    def files(self) -> dict[str, str]:
        """Relative path -> file text, in a stable order (manifest.json last)."""
        t = self.topology
        origin = f"Rendered by edge-harness from topology {t.name!r} (region {t.region}), edition {t.edition.value}."
        edit = "Edit freely: backends apply this directory as it is; re-rendering replaces it."
        out: dict[str, str] = {
            TOPOLOGY_FILE: yamlio.header(
                ["Normalised topology (every default spelled out); backends and the verifier read it.", origin]
            )
            + dump_topology(t),
            KIND_FILE: yamlio.dump_one(
                self.kind_config,
                [
                    "kind cluster config: a control-plane plus one worker per topology node.",
                    origin,
                    edit,
                    *kind.header_lines(t),
                ],
            ),
            VALUES_FILE: yamlio.dump_one(
                self.helm_values,
                [
                    f"Helm values for {helm.CHART_NAME} chart {helm.CHART_VERSION} "
                    f"(Consul {helm.CONSUL_VERSION}) from {helm.CHART_REPO}.",
                    origin,
                    edit,
                ],
            ),
        }
        for name in sorted(self.k8s):
            out[f"{K8S_DIR}/{name}"] = yamlio.dump_all(self.k8s[name], [_describe(name, self.k8s[name]), origin, edit])
        for name in sorted(self.consul):
            out[f"{CONSUL_DIR}/{name}"] = yamlio.dump_all(
                self.consul[name], [_describe(name, self.consul[name]), origin, edit]
            )
        for name in sorted(self.entry):
            out[f"{ENTRY_DIR}/{name}"] = yamlio.dump_all(
                self.entry[name],
                [
                    _describe(name, self.entry[name]),
                    origin,
                    "Per-zone entry points, applied only by the backend this variant is for.",
                    edit,
                ],
            )
        meta = {**self.meta, "files": [*out]}
        out[MANIFEST_FILE] = json.dumps(meta, indent=2) + "\n"
        return out


def _describe(file_name: str, objects: list[dict[str, Any]]) -> str:
    """First header line of a k8s/ or consul/ file: which kinds, which namespaces."""
    kinds = list(dict.fromkeys(str(o.get("kind")) for o in objects))
    namespaces = list(dict.fromkeys(str(o["metadata"]["namespace"]) for o in objects if o["metadata"].get("namespace")))
    where = f" in namespace {', '.join(namespaces)}" if len(namespaces) == 1 else ""
    return f"{file_name}: {', '.join(kinds)}{where} (applied in file-name order)."


def render(topology: Topology, edition: Edition | None = None) -> Rendered:
    """Render every manifest for `topology` (edition None: the topology's own)."""
    ed = topology.edition if edition is None else Edition(edition)
    t = topology.model_copy(update={"edition": ed})
    images = helm.IMAGES[ed]
    meta: dict[str, Any] = {
        "edition": ed.value,
        "topology": t.name,
        "chart": {
            "repo": helm.CHART_REPO,
            "name": helm.CHART_NAME,
            "version": helm.CHART_VERSION,
            "kubernetes": {"min": helm.KUBERNETES_SUPPORTED[0], "max": helm.KUBERNETES_SUPPORTED[1]},
        },
        "release": {"name": names.HELM_RELEASE, "namespace": names.CONSUL_NAMESPACE},
        "consulImage": images["consul"],
        "consulK8sImage": images["consulK8s"],
        "dataplaneImage": images["dataplane"],
        "images": {s.name: s.container_image for s in t.services} | {"nginx": hashicups.NGINX_IMAGE},
    }
    if ed is Edition.ENTERPRISE:
        meta["licenseSecret"] = {"namespace": names.CONSUL_NAMESPACE, **helm.LICENSE_SECRET}
    return Rendered(
        topology=t,
        kind_config=kind.render_kind_config(t),
        helm_values=helm.render_helm_values(t, ed),
        k8s=hashicups.render_k8s(t, ed),
        consul=consul.render_consul(t, ed),
        meta=meta,
        entry=entry.render_entry(t, ed),
    )


def _previous_files(out_dir: Path) -> list[Path]:
    """Files an earlier `write` left in `out_dir` (refusing to clobber a directory that is not ours)."""
    stale = [p for d in (K8S_DIR, CONSUL_DIR, ENTRY_DIR) for p in sorted((out_dir / d).glob("*.yaml"))]
    manifest = out_dir / MANIFEST_FILE
    if not manifest.is_file():
        if stale:
            what = f"holds {K8S_DIR}/ or {CONSUL_DIR}/ YAML but no {MANIFEST_FILE}"
            raise InputError(str(out_dir), "", f"{what}: not a rendered directory, refusing to replace it")
        return []
    try:
        listed = json.loads(manifest.read_text(encoding="utf-8")).get("files", [])
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        listed = []
    root = out_dir.resolve()
    for rel in listed if isinstance(listed, list) else []:
        p = (out_dir / str(rel)).resolve()
        if p.is_relative_to(root) and p.is_file():
            stale.append(p)
    return [*stale, manifest]


def write(rendered: Rendered, out_dir: Path) -> list[Path]:
    """Write the rendered directory, replacing files a previous render left there.

    Only files this module writes are removed (those in k8s/ and consul/ and
    those the old manifest.json lists): a stale object left behind would be
    applied next time, which is worse than a missing one.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = rendered.files()
    for p in _previous_files(out_dir):
        p.unlink(missing_ok=True)
    written = []
    for rel, text in files.items():
        p = out_dir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text.encode("utf-8"))
        written.append(p)
    return written

"""The layout of a rendered directory (docs/CONTRACTS.md §2): the one place its file names live.

The renderer writes these paths and the loader (`harness.render.manifests`)
reads them; neither needs the other for that.
"""

from __future__ import annotations

TOPOLOGY_FILE = "topology.yaml"
KIND_FILE = "kind-config.yaml"
VALUES_FILE = "consul-values.yaml"
MANIFEST_FILE = "manifest.json"
K8S_DIR = "k8s"
CONSUL_DIR = "consul"
ENTRY_DIR = "entry"  # per-zone entry points, one file per backend variant (render/entry.py)

__all__ = ["CONSUL_DIR", "ENTRY_DIR", "K8S_DIR", "KIND_FILE", "MANIFEST_FILE", "TOPOLOGY_FILE", "VALUES_FILE"]

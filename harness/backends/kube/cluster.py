"""`KubeCluster`: one cluster behind an ApiClient, joining the API core and its concerns.

Each concern lives in its own module (api: REST, discovery, nodes, pods;
apply: objects and their status; chaos: pod and node chaos; inventory: the
list + watch history); this class only puts them together.
"""

from __future__ import annotations

from pathlib import Path

from harness.backends.kube.api import api_client_from_kubeconfig
from harness.backends.kube.apply import ApplyMixin
from harness.backends.kube.chaos import PodChaosMixin
from harness.backends.kube.inventory import InventoryMixin


class KubeCluster(ApplyMixin, PodChaosMixin, InventoryMixin):
    """One cluster behind an ApiClient: apply, wait, nodes, inventory, pod chaos."""

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str | Path | None, context: str | None) -> KubeCluster:
        return cls(api_client_from_kubeconfig(kubeconfig, context))

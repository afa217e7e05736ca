"""The Kubernetes version of a cluster (or of a kind node image) against the range the pinned chart supports.

The range comes from the rendered manifests (manifest.json `chart.kubernetes`,
written from `render.helm.KUBERNETES_SUPPORTED` beside the chart pin), never
from a second copy here: re-pinning the chart moves both together. Versions
are compared by minor only (`1.34`), as HashiCorp's compatibility matrix
states them (`1.30.x-1.34.x`); a patch release never leaves the range.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# `v1.34.11` (a gitVersion, a kindest/node tag), `v1.35.2-eks-3025e55` (EKS's gitVersion), `1.30` (the range)
_MINOR = re.compile(r"v?(\d+)\.(\d+)(?:\.\d+)?")


def minor_of(text: str) -> tuple[int, int] | None:
    """(major, minor) of a version string at its start (`v1.35.2-eks-...`, `1.30`), or None."""
    m = _MINOR.match(text.strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


def image_minor(image: str) -> tuple[int, int] | None:
    """(major, minor) a node image's tag names (`kindest/node:v1.34.11@sha256:...`), or None without a `vX.Y` tag."""
    ref = image.split("@", 1)[0]
    _name, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag or not tag.startswith("v"):
        return None
    return minor_of(tag)


@dataclass(frozen=True)
class SupportedRange:
    """The Kubernetes minors a chart supports, oldest and newest inclusive."""

    chart: str  # e.g. "consul-k8s chart 1.9.11", for messages
    low: tuple[int, int]
    high: tuple[int, int]

    def __contains__(self, minor: object) -> bool:
        return isinstance(minor, tuple) and self.low <= minor <= self.high

    def __str__(self) -> str:
        return f"{self.low[0]}.{self.low[1]}-{self.high[0]}.{self.high[1]}"


def supported_range(meta: Mapping[str, Any]) -> SupportedRange | None:
    """The range manifest.json's `chart.kubernetes` gives, or None when the manifests carry none (rendered before
    the range was recorded) or carry one that does not parse."""
    chart = meta.get("chart") or {}
    k8s = chart.get("kubernetes") if isinstance(chart, Mapping) else None
    if not isinstance(k8s, Mapping):
        return None
    low, high = minor_of(str(k8s.get("min", ""))), minor_of(str(k8s.get("max", "")))
    if low is None or high is None or low > high:
        return None
    return SupportedRange(f"consul-k8s chart {chart.get('version', '?')}", low, high)


def version_warning(where: str, git_version: str, rng: SupportedRange | None) -> str | None:
    """One line when `git_version` (the API server's /version) is outside `rng` or cannot be judged, else None.

    A warning, not a refusal: a nightly against a newer EKS than the chart lists may still want its run, and the
    line travels with it (up's output, preflight.json, the report's notes) so nobody reads the result as tested.
    """
    minor = minor_of(git_version)
    if rng is None:
        return (
            f"{where} runs Kubernetes {git_version or '?'}: the manifests name no supported range "
            "(manifest.json chart.kubernetes; re-render), so it was not checked"
        )
    if minor is None:
        return f"{where} reports Kubernetes version {git_version!r}, which does not parse: not checked against {rng}"
    if minor in rng:
        return None
    return (
        f"{where} runs Kubernetes {minor[0]}.{minor[1]} ({git_version}), outside {rng}, the range {rng.chart} "
        "supports: results may reflect an untested combination"
    )


# Kubernetes' version skew policy: "kubectl is supported within one minor version (older or newer) of
# kube-apiserver" (https://kubernetes.io/releases/version-skew-policy/#kubectl).
KUBECTL_SKEW = 1


def kubectl_skew_warning(where: str, kubectl: str, client_git: str, server_git: str) -> str | None:
    """One line when the kubectl at `kubectl` (its `version --client` gitVersion `client_git`) is more than
    KUBECTL_SKEW minors from the API server's `server_git`, or either version does not parse; else None.

    The harness reaches Consul and every sidecar's Envoy admin through `kubectl port-forward`, a protocol both
    sides speak (WebSocket since 1.31, SPDY before): outside the policy that combination is one nobody tested.
    """
    client, server = minor_of(client_git), minor_of(server_git)
    if client is None or server is None:
        return (
            f"{where}: kubectl {kubectl} reports {client_git or '?'} and the API server {server_git or '?'}: "
            "their skew was not checked"
        )
    if client[0] == server[0] and abs(client[1] - server[1]) <= KUBECTL_SKEW:
        return None
    low, high = f"{server[0]}.{max(server[1] - KUBECTL_SKEW, 0)}", f"{server[0]}.{server[1] + KUBECTL_SKEW}"
    return (
        f"{where} runs Kubernetes {server[0]}.{server[1]} ({server_git}) and the harness's port-forwards run "
        f"kubectl {client[0]}.{client[1]} ({client_git}, {kubectl}): outside Kubernetes' skew policy (kubectl "
        f"within one minor of its API server); put a kubectl {low}-{high} first on PATH"
    )

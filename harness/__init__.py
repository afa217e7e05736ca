"""Edge-harness: end-to-end and chaos tests for edge-aware Consul service meshes.

The public API is this thin facade (kopf/httpx style): the pipeline stages live
in subpackages named after it — topology → render → backends → traffic /
chaos → observe → verify → report — and are re-exported here lazily, so that
`import harness` stays cheap (the CLI starts fast, locust workers don't pull in
the kubernetes client).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_topology": "harness.topology",
    "Topology": "harness.topology",
    "render": "harness.render",
    "write_manifests": ("harness.render", "write"),
    "load_manifests": ("harness.render.manifests", "load"),
    "BackendOptions": "harness.backends",
    "connect": "harness.backends",
    "run_traffic": "harness.traffic",
    "run_experiment": "harness.chaos",
    "build_hops": "harness.observe",
    "verify": "harness.verify",
    "write_report": "harness.report",
    "run_e2e": "harness.e2e",
    "E2EOptions": "harness.e2e",
    "InputError": "harness.errors",
    "BackendError": "harness.errors",
}


def __getattr__(name: str) -> Any:
    import importlib

    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(name)
    module, attr = target if isinstance(target, tuple) else (target, name)
    return getattr(importlib.import_module(module), attr)


__all__ = sorted(_EXPORTS)

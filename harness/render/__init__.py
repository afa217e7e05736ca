"""The renderer: topology -> every manifest the backends apply (the single source of truth).

`render` is pure and deterministic: the same topology and edition give the
same bytes, so a rendered directory can be diffed, reviewed and committed, and
a run's copy of it says exactly what was applied. `write` puts it on disk in
the layout of docs/CONTRACTS.md §2 (`harness.render.layout`);
`harness.render.manifests.load` reads a directory back (as edited, if someone
edited it), which is what the backends consume. Nothing here talks to a cluster.

`render`, `write` and `Rendered` live in `harness.render.renderer` and are
loaded on first use: importing the loader (every backend does) must not import
the renderer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.render.layout import CONSUL_DIR, ENTRY_DIR, K8S_DIR, KIND_FILE, MANIFEST_FILE, TOPOLOGY_FILE, VALUES_FILE

if TYPE_CHECKING:
    from harness.render.renderer import Rendered, render, write

_RENDERER = ("Rendered", "render", "write")


def __getattr__(name: str) -> Any:
    if name in _RENDERER:
        from harness.render import renderer

        return getattr(renderer, name)
    raise AttributeError(f"module 'harness.render' has no attribute {name!r}")


__all__ = [
    "CONSUL_DIR",
    "ENTRY_DIR",
    "K8S_DIR",
    "KIND_FILE",
    "MANIFEST_FILE",
    "TOPOLOGY_FILE",
    "VALUES_FILE",
    "Rendered",
    "render",
    "write",
]

"""The local backend: the rendered manifests run on this machine, no Docker.

Kept import-free on purpose: every pod's app is started as
`python -m harness.backends.local.apps.<name>`, which imports this package
first, so anything imported here would slow every pod's start. The backend
class lives in `backend.py` and is re-exported lazily.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LocalBackend", "requirements"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from harness.backends.local import backend

        return getattr(backend, name)
    raise AttributeError(name)

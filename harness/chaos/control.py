"""chaostoolkit control of the harness: close the shared backends when the experiment ends.

Declared in every shipped experiment (``"controls": [{"name": "edge-harness",
"provider": {"type": "python", "module": "harness.chaos.control"}}]``), so a
plain `chaos run` closes the backend (its inventory watcher, log followers) as
soon as the experiment and its rollbacks are done; `atexit` in
`harness.chaos.actions` is the fallback for experiments without it.
"""

from __future__ import annotations

from typing import Any

from harness.chaos.actions import close_backends


def after_experiment_control(context: Any, state: Any = None, **kwargs: Any) -> None:
    """chaostoolkit calls this once the experiment (rollbacks included) has finished."""
    close_backends()

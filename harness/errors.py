"""Errors that cross module boundaries.

`InputError` is the single way bad user input is reported: its text is one line
``FILE: FIELD: message`` and the CLI turns it into exit code 2 with no traceback,
before anything has been started.
"""

from __future__ import annotations


class HarnessError(Exception):
    """Base class of all errors the harness raises on purpose."""


class InputError(HarnessError):
    """Bad input (topology file, manifests, CLI arguments): exit code 2."""

    def __init__(self, source: str, field: str, message: str) -> None:
        self.source = source
        self.field = field
        self.message = message
        super().__init__(self.line)

    @property
    def line(self) -> str:
        parts = [p for p in (self.source, self.field) if p]
        return ": ".join([*parts, self.message])


class BackendError(HarnessError):
    """A backend could not do what was asked (exit code 3)."""


class DryRun(HarnessError):
    """A run that stopped at its plan on purpose (destructive chaos without --execute): exit code 0.

    `str()` is the plan, one line per line; nothing was started or created.
    """

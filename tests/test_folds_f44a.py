"""Folds of review 44 (f44a), each with the case that showed it and a control."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.backends import BackendOptions
from harness.errors import BackendError


# -- e2e on the existing backend: the manifests it checks are the run's, rendered once ----------------------------
class _StopsAtUp:
    """An existing-backend double: it checks the manifests (as EKS's does: every zone's entry point) and stops the
    run at `up`, keeping what each step was given."""

    def __init__(self) -> None:
        self.checked: Any = None
        self.upped: Any = None

    def check_manifests(self, manifests: Any) -> None:
        self.checked = manifests

    def up(self, manifests: Any, progress: Any = None) -> None:
        self.upped = manifests
        raise BackendError("stopped here by the test")

    def down(self) -> None:
        """Nothing was brought up."""

    def require_capability(self, primitive: str, zone: str | None = None) -> None:
        """Every fault is possible (the run stops at `up`)."""

    def check_tools(self) -> None:
        """Needs no outside tool."""

    def close(self) -> None:
        """Holds nothing in this process."""


def _rendered_times(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> tuple[int, _StopsAtUp]:
    import harness.e2e as e2e
    import harness.render as render

    writes: list[Path] = []
    real = render.write

    def counted(rendered: Any, out: Path) -> Any:
        writes.append(out)
        return real(rendered, out)

    backend = _StopsAtUp()
    monkeypatch.setattr(render, "write", counted)
    monkeypatch.setattr(e2e, "choose", lambda _name: (name, "test"))
    monkeypatch.setattr(e2e, "connect", lambda _opts: backend)
    with pytest.raises(BackendError, match="stopped here"):
        e2e.run_e2e(e2e.E2EOptions(runs_root=tmp_path / "runs"), BackendOptions(name=name, execute=True),
                    say=lambda _m: None)  # fmt: skip
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert backend.upped.root == run_dir / "manifests" and (run_dir / "manifests" / "manifest.json").is_file()
    return len(writes), backend


def test_e2e_on_the_existing_backend_renders_the_manifests_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FOLD. The existing backend's check of the manifests before the run directory exists rendered them into a
    directory of its own, and `up` a second time into the run directory (writing them takes a second or two):
    the files checked are now the run's, copied there, and `up` is given what was checked."""
    writes, backend = _rendered_times(tmp_path, monkeypatch, "existing")
    assert writes == 1
    assert backend.checked.objects == backend.upped.objects and backend.checked.root != backend.upped.root
    assert not backend.checked.root.exists()  # the scratch copy is gone once the run directory has its own


def test_control_another_backend_renders_once_into_the_run_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: a backend that asks nothing of the manifests before the run renders them once, into it."""
    writes, backend = _rendered_times(tmp_path, monkeypatch, "kind")
    assert writes == 1 and backend.checked is None

"""State and record files are replaced whole or not at all (harness.contract.files)."""

from __future__ import annotations

import io
import stat
from pathlib import Path
from typing import Any

import pytest

from harness.contract.files import write_atomic


def _fail_midway(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file write dies after part of its bytes are out (a Ctrl-C, a full disk)."""
    real_open = io.open  # os.fdopen and Path.write_text both open through it

    class Half:
        def __init__(self, fh: Any) -> None:
            self.fh = fh

        def __enter__(self) -> Half:
            return self

        def __exit__(self, *exc: object) -> None:
            self.fh.close()

        def write(self, data: Any) -> int:
            self.fh.write(data[: len(data) // 2])
            raise KeyboardInterrupt

    def opener(file: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
        fh = real_open(file, mode, *args, **kw)
        return Half(fh) if "w" in mode else fh

    monkeypatch.setattr(io, "open", opener)


def test_a_write_that_dies_midway_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain write_text truncates first: the reader (or the next `down`) found half a state file."""
    path = tmp_path / "state.json"
    write_atomic(path, '{"applied": ["a", "b"]}\n')
    _fail_midway(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, '{"applied": ["a", "b", "c"]}\n')
    assert path.read_text() == '{"applied": ["a", "b"]}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_key_file_is_private_from_its_first_byte(tmp_path: Path) -> None:
    path = tmp_path / "ca.key"
    write_atomic(path, b"secret", mode=0o600)
    assert path.read_bytes() == b"secret" and stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_kube_backends_state_survives_an_interrupted_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`_save_state` wrote the file in place: interrupted, it left a truncated file that `_state()` reads as {},
    and `down` then deleted nothing and restored no mesh entry it had taken over."""
    from harness.backends.existing import ExistingBackend

    backend = object.__new__(ExistingBackend)  # only its state file: no cluster behind it
    backend.workdir = tmp_path
    backend._save_state(mesh_backups={"ProxyDefaults/None/global": {"spec": {}}}, applied=[{"kind": "Namespace"}])
    _fail_midway(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        backend._save_state(entry={"lax": 30080})
    assert backend._state()["mesh_backups"] == {"ProxyDefaults/None/global": {"spec": {}}}

"""Files written whole or not at all.

The harness's state and record files are read while they are written: a
chaos process reads the backend's state file that `up` wrote, Envoy reloads
an EDS file the moment it is renamed into its watched directory, a probe
reads the traffic budget at any instant, and a Ctrl-C may land mid-write.
A plain `write_text` truncates first, so each of them could see an empty
or half-written file; a half-written backend state file read back as "no
state" made the next `down` forget what `up` created and the mesh entries
it had taken over. `write_atomic` writes a temporary file beside the target
and renames it over the target (rename is atomic within a filesystem).

The temporary name carries the process and thread: two writers of one
file (an e2e run and a `harness chaos` process on one state file) never
write into each other's temporary file. The service-link relay
(`backends/local/linkrelay.py`) keeps its own copy: it runs as a plain
script that imports nothing of the harness.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


def write_atomic(path: Path, data: bytes | str, *, mode: int = 0o666) -> None:
    """Replace `path` with `data` (str: UTF-8) in one rename; on any error the old file is left as it was.

    `mode` is the new file's permission bits before the umask (0o600: readable by its owner only, from its
    first byte on, for keys).
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

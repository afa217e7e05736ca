"""A link's baseline, asked by the chaos process of a process that reads the records (`harness chaos`).

A degraded link is judged against the zone's hops that wait on it since the run settled, outside each earlier
fault's window that reaches the link, which ends at the recovery the hops show (harness.verify `_link_not_slowed`,
`link_baseline_owed`). The chaos process cannot read the hops (it is below the verifier: lint-imports layers), so
after such a fault `harness.chaos.actions.degrade_link` did not wait at all, and a game day's `harness chaos` of
service-link begun soon after a slow recovery degraded the link with no baseline ("not shown", unverified). The
process that started it (`harness chaos`, which can read them) answers instead, through two files of the run
directory: the action asks in `LINK_ASK_FILE` ({zone: token}), the watcher answers in `LINK_WATCH_FILE`
({"pid": its process, "answers": {zone: {"token", "owed": what is still owed or null, "due": epoch s or null}}}).
No watcher (plain `chaos run`, e2e: its own hold before the experiment), or one no longer running: nothing is
asked, as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import uuid
from pathlib import Path
from typing import Any

from harness.contract.files import write_atomic
from harness.contract.rundir import LINK_ASK_FILE, LINK_WATCH_FILE

_ask_lock = threading.Lock()  # a chaos process's background actions run on threads


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def watching(run_dir: Path) -> int | None:
    """The pid of a watcher that answers for `run_dir` and still runs on this machine, else None."""
    pid = _read(run_dir / LINK_WATCH_FILE).get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid  # there, another user's: it answers all the same
    return pid


def ask(run_dir: Path, zone: str) -> str:
    """Ask the watcher for `zone`'s baseline: the token its answer carries."""
    token = uuid.uuid4().hex
    with _ask_lock:
        asked = _read(run_dir / LINK_ASK_FILE)
        asked[zone] = token
        write_atomic(run_dir / LINK_ASK_FILE, json.dumps(asked) + "\n")
    return token


def asked(run_dir: Path) -> dict[str, str]:
    """The questions on file: zone -> token."""
    return {str(z): str(t) for z, t in _read(run_dir / LINK_ASK_FILE).items()}


def answer_of(run_dir: Path, zone: str, token: str) -> dict[str, Any] | None:
    """The watcher's answer to the question `token` about `zone`, None before it has one."""
    ans = (_read(run_dir / LINK_WATCH_FILE).get("answers") or {}).get(zone)
    return ans if isinstance(ans, dict) and ans.get("token") == token else None


def write_watch(run_dir: Path, answers: dict[str, dict[str, Any]]) -> None:
    """The watcher's file: this process and its answers."""
    write_atomic(run_dir / LINK_WATCH_FILE, json.dumps({"pid": os.getpid(), "answers": answers}) + "\n")


def end_watch(run_dir: Path) -> None:
    """The watcher is gone: its file and the questions it answered removed."""
    for name in (LINK_WATCH_FILE, LINK_ASK_FILE):
        with contextlib.suppress(OSError):
            (run_dir / name).unlink()

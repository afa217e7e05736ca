"""e2e's warm-up and cool-down wait for served requests (harness.traffic.RequestWatch), not for a fixed time."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from harness.traffic import RequestWatch


def _req(ts: float, zone: str, ok: bool = True) -> str:
    return json.dumps({"ts": ts, "zone": zone, "status": 200 if ok else 503, "ok": ok}) + "\n"


def test_waits_until_every_zone_served_since_the_given_time(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    w = RequestWatch(path, ["a", "b"])
    assert w.wait(0.0, 1, 0.05) is False  # no file yet: waits its bound, then says so

    def write() -> None:
        with path.open("a") as fh:
            fh.write(_req(1.0, "a") + _req(1.0, "b", ok=False) + '{"ts": 2.0, "zo')  # b failed; a torn line
            fh.flush()
            time.sleep(0.3)
            fh.write('ne": "b", "ok": true}\n' + "not json\n" + _req(3.0, "c"))

    t = threading.Thread(target=write)
    t0 = time.monotonic()
    t.start()
    assert w.wait(0.0, 1, 5.0) is True  # b's first success arrives ~0.3 s later, completed across two reads
    assert time.monotonic() - t0 >= 0.3  # not before it (True, not its bound's False: it came in time)
    t.join()
    assert w.served(0.0) == {"a": 1, "b": 1}
    assert w.served(1.5) == {"a": 0, "b": 1}
    assert w.wait(5.0, 1, 0.05) is False  # nothing since t=5: bounded

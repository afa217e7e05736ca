"""Benchmark: what does attribution cost? Plain FastHttpUser vs the recorded HashiCups user.

Both run against the same Envoy on 127.0.0.1 answering every request with a
canned ``direct_response`` (a HashiCups-shaped GraphQL body), so the server
is never the bottleneck and the difference is locust-side overhead: the
response checks plus one JSON line per request to ``requests.jsonl``.

    .venv/bin/python bench/bench_traffic.py [--users 10] [--seconds 10] [--rounds 1] [--min-ratio 0.8]

Prints req/s of each run and the ratio attributed / plain; exits 1 when the
median ratio over the rounds is below ``--min-ratio`` (so a Makefile target can gate on it). Runs
one after the other in the same invocation (plain first in each round);
each locust run is a separate single-process ``python -m locust``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCUSTFILE = REPO / "loadtests" / "hashicups.py"

BODY = json.dumps(
    {
        "data": {
            "coffees": [{"id": i, "name": f"Coffee {i}", "price": 100 + i} for i in range(1, 7)],
            "coffee": {"id": 1, "name": "Coffee 1", "price": 101},
        }
    }
)

PLAIN_LOCUSTFILE = '''
from locust import FastHttpUser, constant, task

class PlainUser(FastHttpUser):
    """Same journeys and weights as loadtests/hashicups.py, no checks, no records."""
    wait_time = constant(0)

    @task(1)
    def shop(self):
        self.client.get("/", name="GET /")

    @task(3)
    def coffees(self):
        self.client.post("/api", json={"query": "{ coffees { id name price } }"}, name="POST /api coffees")

    @task(2)
    def coffee(self):
        self.client.post("/api", json={"query": '{ coffee(coffeeID: "1") { id name price } }'}, name="POST /api coffee")
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def envoy_binary() -> str:
    local = Path(sys.executable).parent / "envoy"
    return str(local) if local.exists() else "envoy"


def envoy_config(port: int) -> dict[str, object]:
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "shop",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                                        "http_connection_manager.v3.HttpConnectionManager",
                                        "stat_prefix": "shop",
                                        "route_config": {
                                            "virtual_hosts": [
                                                {
                                                    "name": "all",
                                                    "domains": ["*"],
                                                    "routes": [
                                                        {
                                                            "match": {"prefix": "/"},
                                                            "direct_response": {
                                                                "status": 200,
                                                                "body": {"inline_string": BODY},
                                                            },
                                                            "response_headers_to_add": [
                                                                {
                                                                    "header": {
                                                                        "key": "content-type",
                                                                        "value": "application/json",
                                                                    }
                                                                }
                                                            ],
                                                        }
                                                    ],
                                                }
                                            ]
                                        },
                                        "http_filters": [
                                            {
                                                "name": "envoy.filters.http.router",
                                                "typed_config": {
                                                    "@type": "type.googleapis.com/"
                                                    "envoy.extensions.filters.http.router.v3.Router"
                                                },
                                            }
                                        ],
                                    },
                                }
                            ]
                        }
                    ],
                }
            ]
        }
    }


def start_envoy(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Envoy with one worker thread (the machine has few cores; locust needs one)."""
    port = free_port()
    cfg = workdir / "envoy.json"
    cfg.write_text(json.dumps(envoy_config(port)))
    log = (workdir / "envoy.log").open("wb")
    proc = subprocess.Popen(
        [envoy_binary(), "-c", str(cfg), "--concurrency", "1", "--use-dynamic-base-id", "-l", "error"],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"envoy exited: {(workdir / 'envoy.log').read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, url
        except OSError:
            time.sleep(0.05)
    stop(proc)
    raise RuntimeError("envoy did not start listening within 15 s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_locust(locustfile: Path, url: str, users: int, seconds: int, workdir: Path, env: dict[str, str]) -> float:
    """One headless run; req/s = locust's request count / span of its own request timestamps."""
    stats = workdir / f"stats-{time.monotonic_ns()}"
    cmd = [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "--host", url]
    cmd += ["-u", str(users), "-r", str(users * 10), "-t", f"{seconds}s", "--only-summary"]
    cmd += ["--stop-timeout", "2", "--json-file", str(stats)]
    with (workdir / "locust.log").open("ab") as log:
        subprocess.run(
            cmd,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=seconds + 60,
            check=False,
        )
    entries = json.loads(Path(f"{stats}.json").read_text())
    total = sum(e["num_requests"] for e in entries)
    start = min(e["start_time"] for e in entries)
    end = max(e["last_request_timestamp"] for e in entries)
    return total / (end - start) if end > start else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--users", type=int, default=10)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--min-ratio", type=float, default=0.8)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-traffic-") as tmp:
        work = Path(tmp)
        plain = work / "plain_locustfile.py"
        plain.write_text(PLAIN_LOCUSTFILE)
        envoy, url = start_envoy(work)
        try:
            ratios = []
            for rnd in range(1, args.rounds + 1):
                base = {"EH_WAIT": "0", "EH_ENTRYPOINTS": "", "EH_SHAPE": "", "EH_REQUESTS_FILE": ""}
                rps_plain = run_locust(plain, url, args.users, args.seconds, work, base)
                req_file = work / f"requests-{rnd}.jsonl"
                rec_env = {**base, "EH_REQUESTS_FILE": str(req_file), "EH_ZONE": "bench"}
                rps_rec = run_locust(LOCUSTFILE, url, args.users, args.seconds, work, rec_env)
                lines = sum(1 for _ in req_file.open()) if req_file.exists() else 0
                ratio = rps_rec / rps_plain if rps_plain else 0.0
                ratios.append(ratio)
                print(
                    f"round {rnd}: plain FastHttpUser {rps_plain:8.1f} req/s | "
                    f"attributed (checks + requests.jsonl, {lines} lines) {rps_rec:8.1f} req/s | ratio {ratio:.3f}"
                )
        finally:
            stop(envoy)
    median = statistics.median(ratios)
    verdict = "PASS" if median >= args.min_ratio else "FAIL"
    print(
        f"{verdict}: median ratio {median:.3f} over {len(ratios)} round(s) "
        f"(goal >= {args.min_ratio}; users={args.users}, {args.seconds} s per run)"
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())

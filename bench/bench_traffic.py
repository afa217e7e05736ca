"""Benchmark: what does attribution cost? Plain FastHttpUser vs the recorded HashiCups user.

Both run against the same Envoy on 127.0.0.1 answering every request with a
canned ``direct_response`` (a HashiCups-shaped GraphQL body), so the server
is never the bottleneck and the difference is locust-side overhead: the
response checks plus one JSON line per request to ``requests.jsonl``.

    .venv/bin/python bench/bench_traffic.py [--users 10] [--seconds 10] [--rounds 1] [--min-ratio 0.8]

Prints req/s of each run and the ratio attributed / plain, both in wall
req/s and in requests per CPU-second of the locust process; exits 1 when the
median per-CPU-second ratio over the rounds is below ``--min-ratio`` (wall
req/s swings by 2x when other work shares the machine; CPU per request does
not) (so a Makefile target can gate on it). Runs
one after the other in the same invocation (plain first in each round);
each locust run is a separate single-process ``python -m locust``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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


def run_locust(
    locustfile: Path, url: str, users: int, seconds: int, workdir: Path, env: dict[str, str]
) -> tuple[float, float]:
    """One headless run: (wall req/s, req per CPU-second of the locust process).

    Wall req/s = locust's own request count / span of its request timestamps.
    Requests per CPU-second is the steadier figure on a shared machine: with
    zero think time locust is CPU-bound, and other load on the box steals wall
    time from one run and not the other, but not CPU time per request.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
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
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    entries = json.loads(Path(f"{stats}.json").read_text())
    total = sum(e["num_requests"] for e in entries)
    start = min(e["start_time"] for e in entries)
    end = max(e["last_request_timestamp"] for e in entries)
    return (total / (end - start) if end > start else 0.0), (total / cpu if cpu > 0 else 0.0)


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
            ratios: list[float] = []
            cpu_ratios: list[float] = []
            for rnd in range(1, args.rounds + 1):
                base = {"EH_WAIT": "0", "EH_ENTRYPOINTS": "", "EH_SHAPE": "", "EH_REQUESTS_FILE": ""}
                plain_rps, plain_cpu = run_locust(plain, url, args.users, args.seconds, work, base)
                req_file = work / f"requests-{rnd}.jsonl"
                rec_env = {**base, "EH_REQUESTS_FILE": str(req_file), "EH_ZONE": "bench"}
                rec_rps, rec_cpu = run_locust(LOCUSTFILE, url, args.users, args.seconds, work, rec_env)
                lines = sum(1 for _ in req_file.open()) if req_file.exists() else 0
                ratios.append(rec_rps / plain_rps if plain_rps else 0.0)
                cpu_ratios.append(rec_cpu / plain_cpu if plain_cpu else 0.0)
                print(
                    f"round {rnd}: plain FastHttpUser {plain_rps:7.1f} req/s ({plain_cpu:7.1f} req/CPU-s) | "
                    f"attributed {rec_rps:7.1f} req/s ({rec_cpu:7.1f} req/CPU-s, {lines} lines) | "
                    f"ratio {ratios[-1]:.3f} (per CPU-s {cpu_ratios[-1]:.3f})"
                )
        finally:
            stop(envoy)
    median = statistics.median(ratios)
    cpu_median = statistics.median(cpu_ratios)
    verdict = "PASS" if cpu_median >= args.min_ratio else "FAIL"
    print(
        f"{verdict}: median ratio per CPU-second {cpu_median:.3f}, wall req/s {median:.3f}, over {len(ratios)} "
        f"round(s) (goal >= {args.min_ratio} per CPU-second; users={args.users}, {args.seconds} s per run)"
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())

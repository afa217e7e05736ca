"""Benchmark: the service-link relay against a direct path (goal: relayed >= 0.8x direct req/s).

Where the kernel has sch_netem, the local backend delays links with it and
runs no relay: then the same path through a 0 ms netem qdisc is measured too
and is the figure held against the goal (the issue's "a way to delay without
a userspace relay where the kernel allows"); without netem (this machine) the
bench says so and the relay's figure stands.

Two network namespaces joined by a veth pair, as an edge zone and the hub
are: a keep-alive HTTP client in one, and in the other a server (Envoy with a
direct response, so the server is never the bottleneck: the figure is the
relay's own cost), the link relay (`harness/backends/local/linkrelay.py`, the
same script the local backend runs) and nftables `prerouting` redirecting one
of the server's two ports to the relay, as the hub does for edge <-> Region
traffic. Direct = the other port, same server. Latency 0 (the relay's
overhead, not the configured delay), then 10 ms (the relayed round trip must
grow by ~10 ms, not more). Needs root; run it under the local lock:

    flock -o /run/edge-harness-tests.lock .venv/bin/python bench/bench_relay.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_traffic import envoy_binary, envoy_config
from keepalive import LOAD_SCRIPT

from harness.backends.local import linkrelay

GOAL_RATIO = 0.8
NS_C, NS_S = "ehrelay-c", "ehrelay-s"
IP_C, IP_S = "10.251.0.1", "10.251.0.2"
DIRECT, RELAYED, RELAY_PORT = 9002, 9001, 15000


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def ns(name: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", name, *argv]


def setup() -> None:
    teardown()
    sh("ip", "netns", "add", NS_C)
    sh("ip", "netns", "add", NS_S)
    sh("ip", "link", "add", "ehrelay0", "netns", NS_C, "type", "veth", "peer", "name", "ehrelay1", "netns", NS_S)
    for n, dev, ip in ((NS_C, "ehrelay0", IP_C), (NS_S, "ehrelay1", IP_S)):
        sh(*ns(n, "ip", "addr", "add", f"{ip}/24", "dev", dev))
        sh(*ns(n, "ip", "link", "set", dev, "up"))
        sh(*ns(n, "ip", "link", "set", "lo", "up"))
    rules = (f"table ip ehrelay {{\n chain pre {{\n  type nat hook prerouting priority dstnat\n"
             f"  tcp dport {RELAYED} redirect to :{RELAY_PORT}\n }}\n}}\n")  # fmt: skip
    subprocess.run(ns(NS_S, "nft", "-f", "-"), input=rules.encode(), check=True, capture_output=True)


def teardown() -> None:
    for n in (NS_C, NS_S):
        subprocess.run(["ip", "netns", "del", n], capture_output=True, check=False)


def cpu_s(pid: int) -> float:
    """utime + stime of a process (the relay's cost does not depend on what else runs on the machine)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rate(port: int, seconds: float) -> float:
    out = subprocess.run(ns(NS_C, sys.executable, "-c", LOAD_SCRIPT, IP_S, str(port), str(seconds), "/"),
                         capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"load client failed: {out.stderr[-1500:]}")
    return float(out.stdout)


def netem_ratio(direct: float, seconds: float) -> tuple[float, float] | None:
    """The direct port through a 0 ms netem qdisc on the server's veth, against `direct`; None without netem.

    What the issue's alternative asks for ("a way to delay without a userspace
    relay where the kernel allows"): the local backend's hub puts netem on an
    edge zone's link when the kernel has it (network/hub.py `_netem_works`).
    """
    add = ns(NS_S, "tc", "qdisc", "add", "dev", "ehrelay1", "root", "netem", "delay", "0ms")
    if subprocess.run(add, capture_output=True, check=False).returncode != 0:
        return None
    try:
        netem = rate(DIRECT, seconds)
    finally:
        subprocess.run(ns(NS_S, "tc", "qdisc", "del", "dev", "ehrelay1", "root"), capture_output=True, check=False)
    return netem, netem / direct


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_relay: skipped (needs root for network namespaces)")
        return 0
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp:
        work = Path(tmp)
        try:
            setup()
            cfg = envoy_config(DIRECT)
            listener = json.loads(json.dumps(cfg["static_resources"]["listeners"][0]))  # type: ignore[index]
            listener["name"] = "relayed"
            listener["address"]["socket_address"]["port_value"] = RELAYED
            cfg["static_resources"]["listeners"].append(listener)  # type: ignore[index]
            for lst in cfg["static_resources"]["listeners"]:  # type: ignore[index]
                lst["address"]["socket_address"]["address"] = "0.0.0.0"
            (work / "envoy.json").write_text(json.dumps(cfg))
            procs.append(subprocess.Popen(ns(NS_S, envoy_binary(), "-c", str(work / "envoy.json"), "--concurrency",
                                             "1", "--use-dynamic-base-id", "-l", "error"),
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
            conf, ready = work / "relay.json", work / "relay.ready"
            linkrelay.write_config(conf, {"zone": linkrelay.ZoneLink(port=RELAY_PORT)}, ready_file=ready, generation=1)
            relay_log = (work / "relay.log").open("wb")
            procs.append(subprocess.Popen(ns(NS_S, sys.executable, linkrelay.__file__, "--config", str(conf)),
                                          stdout=relay_log, stderr=subprocess.STDOUT))  # fmt: skip
            deadline = time.monotonic() + 15
            while not ready.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.0)  # Envoy listening
            direct = rate(DIRECT, args.seconds)
            c0 = cpu_s(procs[-1].pid)
            try:
                relayed = rate(RELAYED, args.seconds)
            except RuntimeError:
                print((work / "relay.log").read_text()[-3000:])
                raise
            ratio = relayed / direct
            relay_cpu_us = (cpu_s(procs[-1].pid) - c0) / (relayed * args.seconds) * 1e6
            print(f"service-link relay (latency 0): {relayed:8.0f} req/s vs direct {direct:8.0f} req/s: "
                  f"ratio {ratio:4.2f}x (goal >= {GOAL_RATIO}x: {'OK' if ratio >= GOAL_RATIO else 'MISSED'}); "
                  f"relay cost {1e6 / relayed - 1e6 / direct:6.0f} us per round trip wall, "
                  f"{relay_cpu_us:5.1f} us of relay CPU")  # fmt: skip
            linkrelay.write_config(conf, {"zone": linkrelay.ZoneLink(port=RELAY_PORT, latency_ms=10.0)},
                                   ready_file=ready, generation=2)  # fmt: skip
            deadline = time.monotonic() + 5
            while not ready.read_text().startswith("2 ") and time.monotonic() < deadline:
                time.sleep(0.05)
            slow = rate(RELAYED, args.seconds)
            print(f"  latency 10 ms: {slow:6.1f} req/s = {1000 / slow:5.2f} ms per round trip "
                  f"(direct {1000 / direct:5.2f} ms + 10 ms = {1000 / direct + 10:5.2f} ms expected)")  # fmt: skip
            netem = netem_ratio(direct, args.seconds)
            if netem is None:
                print(
                    "  netem: this kernel has no sch_netem (tc qdisc ... netem refused): the relay above is the "
                    "only way to delay a link here; where netem exists the local backend uses it, no relay"
                )
            else:
                met = netem[1] >= GOAL_RATIO
                print(
                    f"  netem (the local backend's link where the kernel has it, no relay): {netem[0]:8.0f} req/s, "
                    f"ratio {netem[1]:4.2f}x (goal >= {GOAL_RATIO}x: {'OK' if met else 'MISSED'})"
                )
                return 0 if met else 1
            return 0 if ratio >= GOAL_RATIO else 1
        finally:
            for p in procs:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
            teardown()


if __name__ == "__main__":
    sys.exit(main())

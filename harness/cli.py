"""`harness`: the command line, a thin face over the library.

Exit codes CI can gate on: 0 pass, 1 verdict failed, 2 bad input or usage,
3 backend/environment error, 130 interrupted. Bad input is one line naming the
file and field, with no traceback, before anything is started.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console

from harness.backends import BACKENDS, BackendOptions
from harness.backends.base import ProgressFn
from harness.errors import BackendError, DryRun, HarnessError, InputError
from harness.interrupt import After, Interrupted, handle_signals
from harness.preflight import PreflightFailed

EXIT_PASS, EXIT_FAIL, EXIT_INPUT, EXIT_BACKEND, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

# CI logs are not terminals: give tables room instead of rich's 80-column default
_WIDTH = None if sys.stdout.isatty() else 160
out = Console(highlight=False, soft_wrap=True, width=_WIDTH)
err = Console(stderr=True, highlight=False, soft_wrap=True, width=_WIDTH)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        err.print(f"{self.prog}: {message}", markup=False)
        sys.exit(EXIT_INPUT)


def _number(
    kind: type[int] | type[float], minimum: float, *, inclusive: bool = True, most: float | None = None
) -> Callable[[str], Any]:
    """An argparse type for a finite number >= (or >) `minimum`, <= `most`: checked before anything starts (exit 2)."""

    def parse(value: str) -> int | float:
        what = "an integer" if kind is int else "a number"
        try:
            n = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None
        if n != n or n in (float("inf"), float("-inf")) or (n < minimum if inclusive else n <= minimum):
            raise argparse.ArgumentTypeError(f"expected {what} {'>=' if inclusive else '>'} {minimum:g}, got {value!r}")
        if most is not None and n > most:
            raise argparse.ArgumentTypeError(f"expected {what} <= {most:g}, got {value!r}")
        return n

    return parse


_COUNT = _number(int, 1)
_SECONDS = _number(float, 0.0)
_DURATION = _number(float, 0.0, inclusive=False)
_PORT = _number(int, 1, most=65535)  # else found only after `up`, when locust cannot bind it


def _out_dir(value: str) -> Path:
    """A directory the command writes into (created if absent): refused before anything starts when it, or the
    nearest part of its path that exists, is not a directory (it used to be a traceback from `mkdir`)."""
    path = Path(value)
    first = next((p for p in (path, *path.parents) if p.exists()), None)
    if first is not None and not first.is_dir():
        what = "is not a directory" if first == path else f"cannot be made: {first} is not a directory"
        raise argparse.ArgumentTypeError(f"{value}: {what}")
    return path


def _cluster_name(value: str) -> str:
    """`--cluster` as `harness.backends.check_cluster_name` takes it (argparse then names the flag)."""
    from harness.backends import check_cluster_name

    try:
        return check_cluster_name(value)
    except InputError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _backend_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("backend")
    g.add_argument("--backend", default="auto", choices=BACKENDS, help="auto = kind when Docker answers, else local")
    g.add_argument("--cluster", default="eh", type=_cluster_name, help="local/kind cluster name (<= 8 letters/digits)")
    g.add_argument("--context", help="existing: kubeconfig context")
    g.add_argument("--kubeconfig", help="existing: kubeconfig file")
    g.add_argument(
        "--allow-context", action="append", default=[], help="existing: allow destructive chaos on this context"
    )
    g.add_argument(
        "--entrypoint", action="append", default=[], metavar="ZONE=URL",
        help="existing: where users enter ZONE (repeat per zone; also EH_ENTRYPOINTS as JSON)",
    )  # fmt: skip
    g.add_argument("--install-consul", action="store_true", help="existing: install the pinned Consul chart")
    g.add_argument(
        "--own-mesh-defaults", action="store_true",
        help="existing: may take over mesh-wide config entries it did not create (restored on down)",
    )  # fmt: skip
    g.add_argument(
        "--execute", action="store_true",
        help="existing: really inject destructive faults (default: a dry run that prints the plan; also EH_EXECUTE=1)",
    )  # fmt: skip
    g.add_argument(
        "--max-share", type=_share, metavar="SHARE",
        help="existing: blast radius, at most this share of a zone's nodes or pods down at once (0-1; also "
        "EH_MAX_SHARE)",
    )  # fmt: skip
    g.add_argument(
        "--kind-image", metavar="IMAGE",
        help="kind: node image for `kind create cluster --image`, used as given (also EH_KIND_IMAGE; default: the "
        "image pinned for your kind release, within the chart's Kubernetes range)",
    )  # fmt: skip
    g.add_argument(
        "--allow-file", type=Path, metavar="FILE",
        help="existing: allow-list file, one context per line (also EH_ALLOW_FILE; default "
        "~/.config/edge-harness/allowed-contexts)",
    )  # fmt: skip


def _share(value: str) -> float:
    from harness.backends.fence import parse_share

    try:
        return parse_share(value, "--max-share")
    except InputError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _bopts(a: argparse.Namespace) -> BackendOptions:
    entry: dict[str, str] = {}
    for v in a.entrypoint:
        zone, sep, url = v.partition("=")
        if not sep or not zone or not url:
            raise InputError("--entrypoint", "", f"expected ZONE=URL, got {v!r}")
        entry[zone] = url
    return BackendOptions(
        name=a.backend,
        cluster=a.cluster,
        context=a.context,
        kubeconfig=a.kubeconfig,
        allow_contexts=list(a.allow_context),
        entrypoints=entry,
        install_consul=a.install_consul,
        own_mesh_defaults=a.own_mesh_defaults,
        execute=a.execute or os.environ.get("EH_EXECUTE", "") in ("1", "true", "yes"),
        max_share=a.max_share,
        allow_file=str(a.allow_file) if a.allow_file else None,
        kind_image=a.kind_image or os.environ.get("EH_KIND_IMAGE") or None,
    )


def _source_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--topology", type=Path, help="topology file (default fixtures/topology.yaml)")
    g.add_argument("--manifests", type=Path, help="a directory written by `harness render` (possibly edited)")
    p.add_argument("--edition", choices=["ce", "enterprise"], help="override the topology's Consul edition")


def _dry_run_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dry-run", action="store_true",
        help="existing: print the plan and stop, even when nothing in it is destructive (a game day's first look: "
        "nothing is injected, nothing created); not with --execute",
    )  # fmt: skip


def _preflight_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preflight",
        choices=["gate", "record"],
        default="gate",
        help="before traffic: gate = stop on a failed preflight (exit 1, chain printed); record = write it, go on",
    )


def _progress(label: str) -> ProgressFn:
    def say(msg: str) -> None:
        out.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {label}{msg}", markup=True, highlight=False)

    return say


# -- commands ------------------------------------------------------------------
EXPERIMENT_HELP = "chaostoolkit experiment: a file, or the name of a shipped one (edge-outage, node-kill ...)"


def _experiment(arg: str) -> Path:
    """`--experiment` as a path; a shipped experiment's name works from any directory (an installed harness)."""
    from harness.chaos.experiment import resolve_experiment

    return resolve_experiment(arg)


def cmd_render(a: argparse.Namespace) -> int:
    from harness.render import render, write
    from harness.topology import Edition, load_topology

    topo = load_topology(a.topology)
    files = write(render(topo, Edition(a.edition) if a.edition else None), a.out)
    out.print(f"rendered {len(files)} files into {a.out}")
    return EXIT_PASS


def _load_manifests(a: argparse.Namespace, workdir: Path, check: Callable[[Any], None] | None = None) -> Any:
    """Render (or copy) the manifests into `workdir`, then `check` them; bad input leaves no new directory behind."""
    import shutil

    from harness.e2e import E2EOptions, prepare_manifests
    from harness.render.manifests import load

    created = [p for p in (workdir, *workdir.parents) if not p.exists()]
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        m = load(prepare_manifests(E2EOptions(topology=a.topology, manifests=a.manifests, edition=a.edition), workdir))
        if check is not None:
            check(m)
        return m
    except BaseException:
        if created:
            shutil.rmtree(created[-1], ignore_errors=True)
        raise


def cmd_up(a: argparse.Namespace) -> int:
    from harness.backends import choose, connect
    from harness.e2e import E2EOptions, source_topology

    name, why = choose(a.backend)
    bopts = _bopts(a)
    bopts.name = name
    out.print(f"backend: {name} ({why})")
    source_topology(E2EOptions(topology=a.topology, manifests=a.manifests, edition=a.edition))  # bad input first
    b = connect(bopts)
    b.check_tools()  # a missing tool: refused before the manifests are copied
    m = _load_manifests(a, Path("runs") / ".up" / a.cluster, b.check_manifests)  # existing: every zone's entry
    b.up(m, progress=_progress("up: "))
    for zone, url in b.entrypoints().items():
        out.print(f"  {zone:24} {url}")
    return EXIT_PASS


def cmd_down(a: argparse.Namespace) -> int:
    from harness.backends import connect, down_all

    if a.all:
        for name in down_all():
            out.print(f"local {name}: down")
        return EXIT_PASS
    b = connect(_bopts(a))
    b.down()
    out.print(f"{b.name}: down")
    return EXIT_PASS


def cmd_status(a: argparse.Namespace) -> int:
    """The cluster's state, its pods, and every zone's entry point with whether it answers now."""
    from rich.table import Table
    from rich.text import Text

    from harness.backends import connect
    from harness.status import probe_entrypoints

    b = connect(_bopts(a))
    try:
        st = b.status()
        entry, entry_err = ({}, "") if not st.up else _entrypoints_of(b)
    finally:
        b.close()
    states = probe_entrypoints(entry)
    if a.json:
        doc = {**st.as_dict(), "entrypoints": [s.as_dict() for s in states]}
        if entry_err:
            doc["entrypoints_error"] = entry_err
        out.print_json(json.dumps(doc))
        return EXIT_PASS if st.up else EXIT_BACKEND
    out.print(f"{st.backend}: {'up' if st.up else 'down'} — {st.detail}", markup=False)
    if st.pods:
        t = Table("pod", "phase")
        for pod, phase in sorted(st.pods.items()):
            t.add_row(pod, phase)
        out.print(t)
    if states:
        et = Table("zone", "entry point", "answers", title="Entry points (GET /)")
        for s in states:
            colour = "green" if s.ok else "yellow" if s.answers else "red"
            answers = Text("yes" if s.answers else "no", style=colour) + Text(f": {s.detail}")
            et.add_row(Text(s.zone), Text(s.url), answers)
        out.print(et)
    elif entry_err:
        out.print(f"entry points: unknown ({entry_err})", markup=False)
    return EXIT_PASS if st.up else EXIT_BACKEND


def _entrypoints_of(b: Any) -> tuple[dict[str, str], str]:
    """The backend's entry points, or why it could not say (status still prints the rest)."""
    try:
        return dict(b.entrypoints()), ""
    except HarnessError as exc:
        return {}, str(exc)


def cmd_traffic(a: argparse.Namespace) -> int:
    from harness.backends import connect
    from harness.e2e import record_traffic
    from harness.run import new_run_dir
    from harness.traffic.runner import check_shoppers, users_wait

    users_wait(os.environ)  # the users' think time (EH_WAIT): a bad value refused before anything else
    b = connect(_bopts(a))
    try:
        unknown = sorted(set(a.probe_zone) - set(b.entrypoints())) if a.probe_zone else []
        if unknown:
            raise InputError("--probe-zone", "", f"no entry point for {', '.join(unknown)}")
        m = b.manifests()  # a cluster nothing was brought up on: refused here, not in a run directory left "running"
        check_shoppers(a.users, [z.name for z in m.topology.zones], a.processes)  # the zones the verdict judges
        run_dir = a.run_dir or new_run_dir(label="traffic")
        res = record_traffic(b, run_dir, a.users, a.duration, a.shape, a.processes, a.probe_period,
                             a.probe_zone or None, preflight=a.preflight)  # fmt: skip
    finally:
        b.close()
    out.print(f"{res.requests} requests, {res.failures} failed, {res.rps:.0f}/s  ->  {run_dir}")
    return EXIT_PASS


def cmd_preflight(a: argparse.Namespace) -> int:
    """Consul's own view of the running mesh against the topology; exit 1 naming each failed check."""
    from harness.backends import connect
    from harness.preflight import describe, run_preflight, write_preflight
    from harness.run import new_run_dir

    b = connect(_bopts(a))
    res = run_preflight(b)
    path = write_preflight(a.run_dir or new_run_dir(label="preflight"), res)
    by_check: dict[str, list[int]] = {}
    for c in res.checks:
        by_check.setdefault(c.check, [0, 0])[0 if c.ok else 1] += 1
    for name, (ok, bad) in by_check.items():
        colour = "green" if not bad else "red"
        out.print(f"[{colour}]{name:18}[/{colour}] {ok} passed, {bad} failed", highlight=False)
    for c in res.failures:
        out.print(describe(c), markup=False, highlight=False)
    for note in res.notes:
        out.print(f"note: {note}", markup=False, highlight=False)
    out.print(f"preflight: {path}")
    if res.ok:
        out.print("[bold green]PASS[/bold green]")
        return EXIT_PASS
    out.print("[bold red]FAIL[/bold red]")
    return EXIT_FAIL


def cmd_chaos(a: argparse.Namespace) -> int:
    """Run one experiment against a cluster that is up (rollbacks always); exit 0 only when it ran as planned.

    Before anything runs: the file must parse (exit 2), the cluster must answer
    and be up (exit 3), and the experiment must fit the cluster's topology and
    capabilities (exit 2, no run directory created). On a cluster that can be
    planned (existing) the plan (nodes, pods, durations, blast radius, steady
    state) is printed next: over the blast radius is exit 2, destructive
    without --execute or anything with --dry-run a dry run (exit 0), a
    steady state that does not hold
    exit 1, a kill switch that is on exit 3: in each case nothing is injected
    and no run directory is created. `--abort RUN_DIR` is the kill switch.
    Afterwards the journal is judged, not just its status: a steady state that
    failed before the method, a failed action or rollback, or a status other
    than completed exits 1 with one line saying why.
    """
    if a.abort is not None:
        return _chaos_abort(a)
    if a.experiment is None:
        raise InputError("harness chaos", "EXPERIMENT", "an experiment file is required (or --abort RUN_DIR)")
    from harness.backends import choose, connect
    from harness.backends.fence import engaged_switch, kill_switch_paths
    from harness.chaos import load_experiment, plan_run, run_planned, write_plan
    from harness.e2e import link_watch
    from harness.gameday import check_dry_run, dry_run_banner, plan_experiment
    from harness.run import new_run_dir

    load_experiment(a.experiment)  # malformed: exit 2 before any backend is touched
    bopts = _bopts(a)
    bopts.name, _ = choose(bopts.name)
    dry_run = check_dry_run(a.dry_run, bopts.execute, bopts.name)
    b = connect(bopts)
    try:
        st = b.status()
        # a cluster the fence plans (existing) answers "not up" with its steady-state problems below (exit 1)
        if not st.up and not hasattr(b, "plan_fault"):
            detail = f" ({st.detail})" if st.detail not in ("", "not up") else ""
            raise BackendError(f"{b.name} cluster {a.cluster!r} is not up{detail}: run `harness up` first")
        # only the primitives the experiment uses are asked (on EKS a partition needs a probe connection)
        topology = b.manifests().topology
        planned = plan_run([a.experiment], topology, None, a.run_dir, require=b.require_capability)
        plan = plan_experiment(a.experiment, planned[0].data, b)  # the experiment as it will run: roles resolved
        if plan is not None:
            for line in plan.lines():
                out.print(line, markup=False, highlight=False)
            plan.refuse_over_blast_radius()
            if dry_run or (plan.destructive and not bopts.execute):
                out.print(dry_run_banner(plan, asked=dry_run), markup=False, highlight=False)
                return EXIT_PASS
            if plan.steady:
                err.print(
                    f"chaos: {a.experiment}: steady state does not hold, nothing injected: {'; '.join(plan.steady)}",
                    markup=False, highlight=False,
                )  # fmt: skip
                return EXIT_FAIL
        switch = engaged_switch(kill_switch_paths(a.run_dir.resolve() if a.run_dir else ""))
        if switch is not None:
            raise BackendError(f"kill switch {switch} is on: nothing injected (remove the file to run chaos again)")
    finally:
        b.close()
    run_dir = a.run_dir or new_run_dir(label="chaos")
    write_plan(run_dir, planned)
    with link_watch(run_dir, topology, planned[0], lambda m: out.print(m, markup=False, highlight=False)):
        res = run_planned(planned[0], run_dir, bopts)  # its link degradations ask this process for their baseline
    if res.ok:
        out.print(f"chaos: {res.id} ran as planned; journal {res.journal}")
        return EXIT_PASS
    err.print(f"chaos: {res.id}: {res.reason} (journal {res.journal})", markup=False, highlight=False)
    return EXIT_FAIL


def _chaos_abort(a: argparse.Namespace) -> int:
    """The kill switch: ABORT file, immediate rollback of every fault in effect, chaos processes stopped."""
    from harness.backends import connect
    from harness.gameday import abort

    if not a.abort.is_dir():
        raise InputError(str(a.abort), "", "not a run directory")
    backend = None
    try:
        backend = connect(_bopts(a))
    except HarnessError as exc:  # still turn the switch on and stop the processes: do what can be done
        err.print(f"abort: cannot reach the cluster to roll back from here: {exc}", markup=False, highlight=False)
    try:
        res = abort(a.abort, backend, say=lambda m: out.print(f"abort: {m}", markup=False, highlight=False))
    finally:
        if backend is not None:
            backend.close()
    if res.still_running:
        err.print(f"abort: chaos processes still running: {res.still_running}", markup=False, highlight=False)
        return EXIT_BACKEND
    return EXIT_PASS


def _verdict(run_dir: Path) -> Any:
    from harness.verify import print_summary, verify, write_verdict

    if not run_dir.is_dir():
        raise InputError(str(run_dir), "", "not a run directory")
    v = verify(run_dir)
    write_verdict(run_dir, v)
    print_summary(v, out)
    return v


def cmd_verify(a: argparse.Namespace) -> int:
    v = _verdict(a.run_dir)
    return EXIT_PASS if v.passed else EXIT_FAIL


def cmd_report(a: argparse.Namespace) -> int:
    from harness.report import write_junit, write_report

    if not a.run_dir.is_dir():
        raise InputError(str(a.run_dir), "", "not a run directory")
    v = _verdict(a.run_dir)
    html = write_report(a.run_dir, v)
    junit = write_junit(a.run_dir, v)
    out.print(f"report: {html}\njunit:  {junit}")
    return EXIT_PASS


def cmd_e2e(a: argparse.Namespace) -> int:
    from harness.e2e import E2EOptions, run_e2e
    from harness.progress import E2EProgress
    from harness.verify import print_summary

    opts = E2EOptions(
        topology=a.topology, manifests=a.manifests, edition=a.edition, experiments=list(a.experiment),
        users=a.users, keep=a.keep, processes=a.processes, warmup_s=a.warmup, cooldown_s=a.cooldown,
        preflight=a.preflight, workers_in_zone=a.workers_in_zone, locust_master_host=a.locust_master_host,
        locust_master_port=a.locust_master_port, dry_run=a.dry_run,
    )  # fmt: skip
    # progress (harness/progress.py): a live panel on a terminal, plain lines in CI logs
    progress = E2EProgress(out)
    try:
        watch = lambda run_dir, planned: progress.start(run_dir, planned, a.warmup, a.cooldown)  # noqa: E731
        res = run_e2e(opts, _bopts(a), say=progress.say, on_start=watch)
    finally:
        progress.stop()
    print_summary(res.verdict, out)
    for m in res.messages:
        out.print(f"[yellow]{m}[/yellow]")
    out.print(f"run: {res.run_dir}  report: {res.run_dir / 'report.html'}")
    out.print("[bold green]PASS[/bold green]" if res.passed else "[bold red]FAIL[/bold red]")
    return EXIT_PASS if res.passed else EXIT_FAIL


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="harness", description="End-to-end and chaos harness for edge-aware Consul service meshes.")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    p = sub.add_parser("render", help="render manifests from a topology")
    p.add_argument("--topology", type=Path)
    p.add_argument("--edition", choices=["ce", "enterprise"])
    p.add_argument("--out", type=_out_dir, required=True)
    p.set_defaults(fn=cmd_render)

    p = sub.add_parser("up", help="bring up a cluster and apply the manifests")
    _source_args(p)
    _backend_args(p)
    p.set_defaults(fn=cmd_up)

    p = sub.add_parser("down", help="remove everything `up` created (idempotent)")
    _backend_args(p)
    p.add_argument("--all", action="store_true", help="local: every local cluster on this machine (after crashes)")
    p.set_defaults(fn=cmd_down)

    p = sub.add_parser("status", help="show the cluster's pods and entry points (and whether each answers)")
    _backend_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_status)

    p = sub.add_parser("traffic", help="drive locust traffic at every zone's entry point")
    _backend_args(p)
    p.add_argument("--users", type=_COUNT, default=10)
    p.add_argument("--duration", type=_DURATION, default=30.0)
    p.add_argument("--shape", choices=["steady", "ramp"], default="steady")
    p.add_argument("--processes", type=_COUNT, default=1, help="locust worker processes (locust's distributed mode)")
    p.add_argument("--probe-period", type=_SECONDS, help="seconds between zone probes (default 0.03; 0: no probes)")
    p.add_argument("--probe-zone", action="append", default=[], help="probe only these zones (repeatable)")
    p.add_argument("--run-dir", type=_out_dir)
    _preflight_arg(p)
    p.set_defaults(fn=cmd_traffic)

    p = sub.add_parser("preflight", help="check Consul's own view of the running mesh (chains, health, intentions)")
    _backend_args(p)
    p.add_argument("--run-dir", type=_out_dir, help="write preflight.json here (default: a new run directory)")
    p.set_defaults(fn=cmd_preflight)

    p = sub.add_parser("chaos", help="run a chaostoolkit experiment (rollbacks always)")
    _backend_args(p)
    p.add_argument("experiment", type=_experiment, nargs="?", help=EXPERIMENT_HELP)
    p.add_argument("--run-dir", type=_out_dir)
    _dry_run_arg(p)
    p.add_argument(
        "--abort", type=Path, metavar="RUN_DIR",
        help="kill switch: roll back every fault in effect now and stop the run's chaos processes",
    )  # fmt: skip
    p.set_defaults(fn=cmd_chaos)

    p = sub.add_parser("verify", help="judge a run directory; exit 1 when an invariant fails")
    p.add_argument("run_dir", type=Path)
    p.set_defaults(fn=cmd_verify)

    p = sub.add_parser("report", help="write report.html and junit.xml for a run directory")
    p.add_argument("run_dir", type=Path)
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("e2e", help="render, up, traffic + chaos, verify, report, down")
    _source_args(p)
    _backend_args(p)
    p.add_argument(
        "--experiment", type=_experiment, action="append", default=[], help=f"{EXPERIMENT_HELP} (repeatable)"
    )
    p.add_argument("--users", type=_COUNT, default=12)
    p.add_argument("--processes", type=_COUNT, default=1)
    p.add_argument("--warmup", type=_SECONDS, default=8.0,
                   help="the first fault starts as soon as every zone a fault acts on served 20 requests and "
                        "every other zone 5 (every zone 20 when a fault acts on the Region); a zone still short "
                        "that gains no request for this many seconds ends the wait (said, and unverified)")  # fmt: skip
    p.add_argument("--cooldown", type=_SECONDS, default=8.0,
                   help="at most this many seconds of traffic after the last experiment for every zone's users to "
                        "be served after the last fault's restore (longer when they think longer, EH_WAIT); then it "
                        "stops once each restored Local Zone is shown back in-zone (at most slo.maxRecoveryS after "
                        "its restore)")  # fmt: skip
    p.add_argument("--keep", action="store_true", help="leave the cluster up afterwards")
    p.add_argument(
        "--workers-in-zone", action="store_true",
        help="kind/existing: locust workers as pods in each entry zone (locust's distributed mode, master here)",
    )  # fmt: skip
    p.add_argument("--locust-master-host", help="this machine as the worker pods reach it (kind: found by itself)")
    p.add_argument("--locust-master-port", type=_PORT, default=5557)
    _dry_run_arg(p)
    _preflight_arg(p)
    p.set_defaults(fn=cmd_e2e)
    return ap


def main(argv: list[str] | None = None, after: After = After.RESTORE) -> int:
    """Run one command in-process; `after` is what signals do once it is over (default: the caller's handlers).

    The `harness` process is `harness.__main__.command`, which passes
    `After.IGNORE`: once this returns, its outcome is decided.
    """
    try:
        args = build_parser().parse_args(argv)  # within the try: a signal while parsing is an interruption too
        with handle_signals(lambda m: err.print(m, markup=False, highlight=False), after):
            return int(args.fn(args))
    except Interrupted as exc:
        err.print(f"interrupted ({exc.name}): everything started was cleaned up; records so far are kept",
                  markup=False, highlight=False)  # fmt: skip
        return exc.exit_code
    except DryRun as exc:
        out.print(str(exc), markup=False, highlight=False)
        return EXIT_PASS
    except InputError as exc:
        err.print(exc.line, markup=False, highlight=False)
        return EXIT_INPUT
    except PreflightFailed as exc:  # a misconfigured mesh, found before any traffic: a failed verdict
        err.print(str(exc), markup=False, highlight=False)
        return EXIT_FAIL
    except BackendError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        return EXIT_BACKEND
    except HarnessError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        return EXIT_BACKEND
    except KeyboardInterrupt:
        err.print("interrupted: everything started was cleaned up; records so far are kept", markup=False)
        return EXIT_INTERRUPTED

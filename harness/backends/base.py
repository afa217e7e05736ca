"""The one protocol every backend (kind, existing, local) implements, split by concern.

Backends take the rendered manifests (a directory written by `harness render`,
loaded with `harness.render.manifests.load`) and never import the verifier,
the report or the CLI. Everything the later stages need from a backend goes
through this protocol:

- `Lifecycle`: up, down, status, artifacts, close;
- `Observation`: where users enter, which pod held which IP when (the
  inventory, `harness.contract.inventory`), the sidecars' access logs, Envoy's
  admin API, Consul's HTTP API, the nodes;
- `Chaos`: the fault primitives, each declared once in `PRIMITIVES` (method,
  restore, arguments) and dispatched by name (`dispatch`, `Chaos.perform`)
  by the chaos actions and the local daemon; `capabilities()` says which this
  cluster can do.

`Backend` joins the three. `ProgressFn` is the one spelling of a progress callback.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.contract.inventory import Inventory
from harness.contract.inventory import PodInfo as PodInfo  # re-exported: the protocol's inventory record
from harness.contract.logsource import LogSource
from harness.errors import BackendError

if TYPE_CHECKING:
    from harness.render.manifests import Manifests


ProgressFn = Callable[[str], None]
"""The one spelling of a progress callback: one line per step of a long operation (`up`, apply, waits)."""


def no_progress(_msg: str) -> None:
    """The default `ProgressFn`: long steps report progress only when someone listens."""


ADMIN_WORKERS = 8
"""How many sidecars' admin APIs `each_admin` asks at once."""
LOW_PRIORITY = 19


def lower_priority() -> None:
    """Run the calling thread at nice 19 (Linux: niceness is per thread, inherited by threads it starts).

    For evidence read at fault boundaries (every sidecar's counters), exactly
    where failover instants are measured: it must yield to the traffic it documents.
    """
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOW_PRIORITY)


AdminAnswers = dict[str, "bytes | str"]
"""Pod -> its sidecar's answer (bytes), or why it gave none (text: a pod dying meanwhile is normal)."""


def answers_to_json(answers: AdminAnswers) -> dict[str, dict[str, str]]:
    """`AdminAnswers` as JSON (the local daemon's reply): a body as latin-1 text, which maps bytes one to one."""
    return {pod: {"body": a.decode("latin-1")} if isinstance(a, bytes) else {"error": a} for pod, a in answers.items()}


def answers_from_json(doc: Any, pods: Sequence[str]) -> AdminAnswers:
    """`answers_to_json` read back, for `pods`; a pod missing or malformed in `doc` is an error answer."""
    out: AdminAnswers = {}
    for pod in pods:
        item = doc.get(pod) if isinstance(doc, dict) else None
        if isinstance(item, dict) and isinstance(item.get("body"), str):
            out[pod] = item["body"].encode("latin-1")
        else:
            out[pod] = str(item.get("error")) if isinstance(item, dict) and "error" in item else "no answer"
    return out


def each_admin(
    get: Callable[[str, str, float], bytes], pods: Sequence[str], path: str, timeout_s: float,
    workers: int = ADMIN_WORKERS,
) -> AdminAnswers:  # fmt: skip
    """`get(pod, path, timeout_s)` for every pod, concurrently on low-priority threads; failures as text."""

    def one(pod: str) -> tuple[str, bytes | str]:
        try:
            return pod, get(pod, path, timeout_s)
        except Exception as exc:  # evidence is collected, never fatal: the failure is the pod's answer
            return pod, f"{type(exc).__name__}: {exc}"

    if not pods:
        return {}
    with ThreadPoolExecutor(
        max_workers=max(1, min(workers, len(pods))), thread_name_prefix="envoy-admin", initializer=lower_priority
    ) as ex:
        return dict(ex.map(one, pods))


@dataclass(frozen=True)
class ChaosPrimitive:
    """One fault a backend can inject, declared once: its method, its restore, their arguments.

    The chaos actions, the local backend's client and its daemon all dispatch
    by this table (`Chaos.perform`), so adding a primitive is one entry here
    plus its implementation in each backend.
    """

    name: str  # the backend method that injects it (also the capability name)
    params: tuple[str, ...]  # its arguments, in order
    restore: str | None  # the method that undoes it (None: the cluster heals itself, e.g. a killed pod)
    restore_params: tuple[str, ...] = ()
    returns_pods: bool = False  # inject / restore return the pod names they acted on


PRIMITIVES: dict[str, ChaosPrimitive] = {
    p.name: p
    for p in (
        ChaosPrimitive("kill_pod", ("zone", "service"), None, returns_pods=True),
        ChaosPrimitive("kill_node", ("node",), "restore_node", ("node",)),
        ChaosPrimitive("zone_outage", ("zone",), "restore_zone", ("zone",)),
        ChaosPrimitive("set_link", ("zone", "latency_ms", "loss_percent"), "clear_link", ("zone",)),
        ChaosPrimitive("partition_zone", ("zone",), "heal_zone", ("zone",)),
        ChaosPrimitive("set_pod_unready", ("zone", "service"), "set_pod_ready", ("zone", "service"), returns_pods=True),
    )
}
CHAOS_PRIMITIVES = frozenset(PRIMITIVES)
"""Fault-injecting primitives (each has its restore); `Backend.capabilities()` returns a subset."""

# Every chaos method (injects and restores) -> (its primitive, its parameter names).
CHAOS_METHODS: dict[str, tuple[ChaosPrimitive, tuple[str, ...]]] = {
    **{p.name: (p, p.params) for p in PRIMITIVES.values()},
    **{p.restore: (p, p.restore_params) for p in PRIMITIVES.values() if p.restore is not None},
}


def dispatch(target: Any, method: str, args: Mapping[str, Any]) -> Any:
    """Call the chaos `method` of `target` (a backend, the local cluster) by name, checked against the table.

    The one dispatch the chaos actions, `Chaos.perform` and the local daemon share.
    """
    if method not in CHAOS_METHODS:
        raise BackendError(f"unknown chaos operation {method!r}")
    return getattr(target, method)(**args)


def chaos_arguments(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Positional and keyword arguments of a chaos `method` call as keywords (for forwarding it)."""
    _spec, params = CHAOS_METHODS[method]
    if len(args) > len(params):
        raise TypeError(f"{method}() takes {len(params)} arguments, got {len(args)}")
    out = dict(zip(params, args, strict=False))
    for k, v in kwargs.items():
        if k not in params or k in out:
            raise TypeError(f"{method}() got an unexpected or repeated argument {k!r}")
        out[k] = v
    return out


@dataclass(frozen=True)
class ConfigEntryStatus:
    """The consul-k8s `Synced` condition of one config-entry CRD (ServiceResolver, ...).

    `synced` is the condition's status: True, False, or None for "Unknown" or
    no condition yet; `reason`/`message` as the controller wrote them
    (shared/reference/consul-http-api-subset.md §6).
    """

    kind: str
    namespace: str
    name: str
    synced: bool | None
    reason: str = ""
    message: str = ""

    @property
    def status(self) -> str:
        """The condition's status as consul-k8s writes it: "True", "False" or "Unknown" (None)."""
        return "Unknown" if self.synced is None else str(self.synced)

    def text(self) -> str:
        """One clause for a message: `Synced=<status>: <reason> <message>`, and for Unknown why it means "not yet".

        consul-k8s writes Unknown as it takes a new entry (its finalizer added, before the write to Consul) and
        when an update of an entry already in Consul failed (reason ConsulAgentError, the error as message;
        controllers/configentries/configentry_controller.go syncUnknown, syncUnknownWithError); an entry no
        controller has reached has no condition at all. Either goes on to True (or False) once the controller
        reconciles it, so it is "not yet", and a controller that is down leaves it there.
        """
        why = " ".join(x for x in (self.reason, self.message) if x)
        if why:
            return f"Synced={self.status}: {why}"
        if self.synced is None:
            return (
                f"Synced={self.status} (consul-k8s has not written it to Consul yet: its controller has not "
                "reconciled it, or is down)"
            )
        return f"Synced={self.status}"


@dataclass(frozen=True)
class EdgeProbe:
    """A real call from one service identity to another that the intentions must refuse.

    `possible` False: the backend cannot make such a call (it would need the
    source's mTLS identity); the preflight check then says so instead of
    passing. `refused`: the destination's sidecar refused it (HTTP 403 from
    the RBAC filter, or the connection closed for a TCP service).
    """

    possible: bool
    refused: bool
    detail: str


CONSUL_TOKEN_ENV = "CONSUL_HTTP_TOKEN"
CONSUL_TOKEN_FILE_ENV = "CONSUL_HTTP_TOKEN_FILE"
CONSUL_CACERT_ENV = "CONSUL_CACERT"
CONSUL_VERIFY_ENV = "CONSUL_HTTP_SSL_VERIFY"
CONSUL_TOKEN_RIGHTS = "service:read, intentions:read, node:read and agent:read (service:write for the edge probe)"
"""What the harness's Consul token must allow: the calls it makes and their ACLs (Consul's API docs).

`/v1/config/:kind` needs service:read (intentions:read for service-intentions, nothing for
proxy-defaults), `/v1/discovery-chain/:s` service:read, `/v1/health/service/:s` node:read and
service:read, `/v1/connect/intentions/check` intentions:read; the edge probe's
`/v1/agent/connect/ca/leaf/:s` service:write on the source and `/v1/agent/self` agent:read
(without them the probe is only noted as not possible). `/v1/status/leader` and the CA roots need none.
"""


@dataclass(frozen=True)
class ConsulAccess:
    """How to talk to a Consul HTTP API besides its URL: which CA to trust and which ACL token to send.

    An operator's Consul installed as HashiCorp's EKS tutorial does has TLS on
    (HTTPS only: the chart's `global.tls.httpsOnly` defaults to true) and ACLs
    managed by consul-k8s; every call then needs the cluster's CA and a token.
    The token comes only from the operator (`CONSUL_HTTP_TOKEN`, or the file
    named by `CONSUL_HTTP_TOKEN_FILE`, as Consul's CLI reads them): the
    harness never takes the cluster's bootstrap (root) token by itself.
    """

    token: str | None = None
    ca_file: str | None = None  # PEM the server certificate must chain to (None: the system's roots)
    verify: bool = True  # False only when the operator says so (CONSUL_HTTP_SSL_VERIFY=false)
    ca_source: str = ""  # where ca_file came from, for messages (e.g. "CONSUL_CACERT", "Secret consul/consul-ca-cert")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ConsulAccess:
        """The operator's settings, named as Consul's own CLI names them; BackendError on an unreadable file."""
        env = os.environ if env is None else env
        token = env.get(CONSUL_TOKEN_ENV) or None
        token_file = env.get(CONSUL_TOKEN_FILE_ENV)
        if token is None and token_file:
            try:
                token = Path(token_file).read_text(encoding="utf-8").strip() or None
            except OSError as exc:
                raise BackendError(f"{CONSUL_TOKEN_FILE_ENV}={token_file}: cannot read it: {exc.strerror}") from None
        ca_file = env.get(CONSUL_CACERT_ENV) or None
        if ca_file is not None and not Path(ca_file).is_file():
            raise BackendError(f"{CONSUL_CACERT_ENV}={ca_file}: no such file (the CA of Consul's HTTPS API)")
        verify = env.get(CONSUL_VERIFY_ENV, "true").strip().lower() not in ("false", "0", "no")
        return cls(token=token, ca_file=ca_file, verify=verify, ca_source=CONSUL_CACERT_ENV if ca_file else "")

    @property
    def headers(self) -> dict[str, str]:
        """`X-Consul-Token` when there is a token (Consul's header; `Authorization: Bearer` works too)."""
        return {"X-Consul-Token": self.token} if self.token else {}

    def tls_verify(self) -> ssl.SSLContext | bool:
        """What an httpx client verifies the server with: the CA file, the system's roots, or nothing."""
        if not self.verify:
            return False
        return ssl.create_default_context(cafile=self.ca_file) if self.ca_file else True

    @property
    def requests_verify(self) -> str | bool:
        """The same for py-consul (requests' `verify`: a CA bundle path, or a bool)."""
        return (self.ca_file or True) if self.verify else False

    def denied(self, where: str, detail: str) -> BackendError:
        """The one line for an ACL refusal: what Consul said, and what to set."""
        what = (
            f"the token in {CONSUL_TOKEN_ENV} is not allowed"
            if self.token
            else f"ACLs are on and no token is set: set {CONSUL_TOKEN_ENV}"
        )
        return BackendError(
            f"Consul at {where} refused the harness ({detail.strip()[:200]}): {what} "
            f"(the token needs {CONSUL_TOKEN_RIGHTS}: the policy is in README, Run against EKS)"
        )


@dataclass
class Status:
    backend: str
    up: bool
    detail: str = ""
    pods: dict[str, str] = field(default_factory=dict)  # pod -> phase

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RecordFollower:
    """Keeps run-directory record files equal to the files a backend writes as things happen.

    A backend's inventory and entry-point history are written where the
    backend can write them (the local daemon's state directory, this
    process's records directory for kind/EKS); from `Observation.record_into`
    on, a thread appends every complete line they gain to the run directory's
    file of the same name, so the run directory holds the history from the
    start, also when the process dies mid-run. `stop()` copies the rest
    (a torn last line included, as the source has it). A source that is
    replaced (shorter than what was copied) is copied again from its start.
    """

    def __init__(self, sources: Mapping[str, Path], run_dir: Path, interval_s: float = 0.25) -> None:
        self.sources = dict(sources)
        self.run_dir = run_dir
        self.interval_s = interval_s
        self._offsets: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="eh-record-follower", daemon=True)
        self.errors: list[str] = []

    @property
    def names(self) -> set[str]:
        return set(self.sources)

    def start(self) -> RecordFollower:
        self.poll()
        self._thread.start()
        return self

    def poll(self, final: bool = False) -> None:
        with self._lock:
            for name, src in self.sources.items():
                try:
                    self._copy(name, src, final)
                except OSError as exc:
                    self.errors.append(f"{name}: {exc}")

    def _copy(self, name: str, src: Path, final: bool) -> None:
        dst = self.run_dir / name
        if not src.exists():
            return
        offset = self._offsets.get(name)
        size = src.stat().st_size
        if offset is None or size < offset:  # first sight, or the source was replaced: start over
            dst.write_bytes(b"")
            offset = 0
        if size == offset:
            self._offsets[name] = offset
            return
        with src.open("rb") as fh:
            fh.seek(offset)
            data = fh.read(size - offset)
        if not final:
            data = data[: data.rfind(b"\n") + 1]  # complete lines only while the writer may be mid-line
        if data:
            with dst.open("ab") as out:
                out.write(data)
        self._offsets[name] = offset + len(data)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def stop(self) -> None:
        """Stop following and copy what is left (idempotent)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.poll(final=True)


class Lifecycle(ABC):
    """Bring a cluster up and down, say how it is, and hand over artifacts."""

    name: str

    @abstractmethod
    def up(self, manifests: Manifests, progress: ProgressFn | None = None) -> None:
        """Create the cluster (if the backend owns one) and apply the manifests; `progress` gets one line per step."""

    @abstractmethod
    def manifests(self) -> Manifests:
        """The manifests the running cluster was brought up with (for a later process's run directory)."""

    @abstractmethod
    def down(self) -> None:
        """Remove everything `up` created. Idempotent; works after a crash."""

    @abstractmethod
    def status(self) -> Status: ...

    @abstractmethod
    def save_artifacts(self, out: Path) -> None:
        """For the post-mortem: whatever the backend can hand over (pod logs, events, Envoy config dumps)."""

    def prestart(self) -> None:  # noqa: B027 - a no-op is right for backends with nothing to start ahead
        """Start now, for the next `up`, what needs no manifests (local: the daemon's interpreter and imports),
        so that it runs while the caller checks its inputs and renders; `close` ends what `up` did not take."""

    def check_tools(self) -> None:  # noqa: B027 - a no-op is right for backends that need no outside tool
        """BackendError naming the first tool `up` and chaos will need that is not here (kind: docker, kind, helm,
        kubectl). Asked before anything starts (no run directory, no rendered copy), not first inside `up`."""

    def check_manifests(self, manifests: Manifests) -> None:  # noqa: B027 - most backends ask nothing more
        """InputError for what these manifests lack on this backend, found without touching a cluster (existing:
        a zone with no way in); `up` asks it again first. `harness e2e` asks before its run directory exists."""

    def close(self) -> None:  # noqa: B027 - a no-op is right for backends that hold nothing in-process
        """Release what this client holds in this process (watch threads, log followers); the cluster stays.

        Idempotent. The chaostoolkit extension shares one backend per process
        and calls this when chaostoolkit's process ends, so no thread outlives it.
        """


class Observation(ABC):
    """What the later stages read of a running cluster: entry points, inventory, logs, Envoy and Consul."""

    name: str

    @abstractmethod
    def inventory(self) -> Inventory: ...

    @abstractmethod
    def entrypoints(self) -> dict[str, str]:
        """Zone name → base URL of that zone's frontend, as users reach it."""

    @abstractmethod
    def log_sources(self) -> list[LogSource]:
        """Current sidecar access-log sources (call again to pick up new pods)."""

    def flush_access_logs(self, timeout_s: float = 30.0) -> list[str]:
        """Block until every access-log line the sidecars wrote so far can be read from `log_sources()`.

        Call it after the last request and before the collector's last poll:
        Envoy buffers access logs and writes them every
        `--file-flush-interval-msec` (default 10 s), so "traffic stopped" is
        not "logs complete". Returns one line per sidecar that could not be
        confirmed complete, as ``<pod>: why``: the verifier reads the pod off
        the front (a dead pod's lost lines are a note, a live one's leave the
        verdict's coverage unverified). This default suits a
        backend whose sources tail files that its sidecars flush on their own
        short interval; the Kubernetes backends override it (Envoy's
        `write_total_buffered` gauge, then a catch-up read of each container log).
        """
        return []

    def shares_runner_clock(self) -> bool:
        """Whether the sidecars stamp their access logs with this machine's clock (one kernel: local, kind).

        Every record the harness writes (faults, inventory events, user requests) has this machine's time;
        a hop has its node's. Where the two clocks are not one, `harness.e2e` measures the offset per zone
        (`harness.traffic.clock`, `clock.jsonl`) and the verifier corrects hops by it or fails them as
        unverified. True by default: a backend whose nodes are processes or containers of this machine.
        """
        return True

    def record_sources(self) -> dict[str, Path]:
        """The record files this backend writes as things happen, by run-directory name (`inventory.jsonl`,
        `entrypoints.jsonl`); none by default (an in-memory inventory is written out at the end instead)."""
        return {}

    def record_gaps(self) -> list[str]:
        """Why this backend's records of the run are incomplete (one line each), e.g. a pod watch the API server
        refused; none by default. The recording step writes them to `recording.jsonl`, where the verdict fails
        what they may miss as unverified."""
        return []

    def log_rotations(self) -> list[str]:
        """Each sidecar log the cluster rotated while it was followed, one line each; none by default (the local
        backend's logs are files it never rotates). The recording step writes them to `recording.jsonl`
        (`LOG_ROTATION`), which the verdict turns into notes: a gap in a log is then read beside them."""
        return []

    def record_into(self, run_dir: Path) -> RecordFollower:
        """From now on keep `run_dir`'s inventory / entry-point records equal to this backend's (see
        `RecordFollower`); stop the follower after the last event to be recorded."""
        return RecordFollower(self.record_sources(), run_dir).start()

    @abstractmethod
    def envoy_admin(self, pod: str, path: str, timeout_s: float = 5.0) -> bytes:
        """GET `path` (e.g. ``/clusters?format=json``) on the Envoy admin API of `pod`'s sidecar."""

    def envoy_admin_many(self, pods: Sequence[str], path: str, timeout_s: float = 5.0) -> AdminAnswers:
        """`envoy_admin` of many pods at one instant (upstream-counter snapshots): each answer, or why none.

        Default: `envoy_admin` per pod, concurrently at low priority
        (`each_admin`; kind/EKS: a port-forward each). A backend that can ask
        them all in one round trip overrides it: the local backend's daemon
        does the GETs itself. Measured on the wide topology (50 sidecars, 2
        cores): a snapshot cost 0.23 cpu-s as one request per pod and 0.10 as
        one request, and a burst of 20 kills takes 60 snapshots.
        """
        return each_admin(self.envoy_admin, pods, path, timeout_s)

    @abstractmethod
    def consul_api(self) -> AbstractContextManager[str]:
        """A context yielding the base URL of Consul's HTTP API (``http://127.0.0.1:PORT``) while it lasts.

        ``https://`` when the Consul serves HTTPS only; `consul_access` then says which CA to trust.
        """

    def consul_access(self) -> ConsulAccess:
        """The CA and ACL token for `consul_api`'s URL. Default: the operator's environment (`ConsulAccess.from_env`).

        kind/EKS add the CA of an HTTPS-only Consul from the chart's Secret when none is given.
        """
        return ConsulAccess.from_env()

    # -- Consul's view, for preflight (harness.preflight) ----------------------
    def cluster_warnings(self) -> list[str]:
        """What about the cluster a run's result must carry with it, one line each; none by default.

        kind/EKS: a Kubernetes outside the range the pinned chart supports (it runs, but untested). Preflight
        writes them to preflight.json's `warnings`, and the verdict lists them among the report's notes.
        """
        return []

    def config_entry_status(self) -> list[ConfigEntryStatus]:
        """The `Synced` condition of every config-entry CRD applied (kind/EKS: the CRDs' status).

        Not abstract so that backends gain it one at a time; the default says
        the backend cannot tell, and preflight's `crd-synced` check fails with
        that message (unverified is a failure).
        """
        raise BackendError(f"{self.name}: this backend cannot report the config-entry CRDs' Synced condition")

    def probe_edge(self, source: str, destination: str) -> EdgeProbe:
        """Call `destination` (a Consul service) as `source` would, through its sidecar's inbound listener.

        Names as the intentions API writes them: ``name``, or ``namespace/name``
        in Enterprise.

        Used by preflight's `refused-probe` check on an edge the topology does
        not declare. Default: not possible here (see `EdgeProbe`).
        """
        return EdgeProbe(False, False, f"{self.name}: calling as another service's identity is not possible here")

    @abstractmethod
    def nodes(self) -> dict[str, str]:
        """Node name → zone name."""

    def control_plane_nodes(self) -> dict[str, list[str]]:
        """Node name → the mesh control-plane pods running on it (the Consul server, the connect injector).

        A node fault that also stops one of them is another fault than a node loss: the catalog freezes (no
        server) or nobody deregisters the node's pods (no injector's endpoints controller), so failover
        rests on Envoy's passive checks alone and recovery waits for the control plane's restart. The chaos
        actions ask before they stop a node (`harness.chaos.actions.kill_node`, docs/CONTRACTS.md). Not
        abstract so that backends gain it one at a time; the default says this backend cannot tell, and a
        node fault is then refused (unverified is a failure), never run blind.
        """
        raise BackendError(f"{self.name}: this backend cannot tell which nodes run the mesh's control plane")


def node_to_stop(
    candidates: Sequence[str], control: Mapping[str, Sequence[str]]
) -> tuple[str | None, dict[str, list[str]]]:
    """The node a node fault stops among `candidates` (in their order): the first that runs none of the mesh's
    control-plane pods (`control`: `Backend.control_plane_nodes`), None when every one runs some; and the
    candidates passed over for it. One rule for the chaos action that stops it and the plan that says which it
    will be (the existing backend's `plan_fault`), so a game day's plan names the node the action then stops.
    """
    passed_over = {n: list(control[n]) for n in candidates if control.get(n)}
    return next((n for n in candidates if n not in passed_over), None), passed_over


def control_plane_refusal(action: str, what: str, hit: Mapping[str, Sequence[str]]) -> str:
    """Why a node fault that can only be had with the control plane is refused (one line, for the journal)."""
    pods = "; ".join(f"{n}: {', '.join(p)}" for n, p in hit.items())
    return (
        f"{action}: {what} runs the mesh's control plane ({pods}): stopping it would take the Consul control "
        "plane down too, another fault than a node loss, so it is refused before anything is recorded "
        "(docs/CONTRACTS.md, 'Node faults and the control plane')"
    )


class Chaos(ABC):
    """The fault primitives of `PRIMITIVES`, what this cluster can do of them, and one generic dispatch."""

    name: str

    @abstractmethod
    def capabilities(self) -> frozenset[str]:
        """The chaos primitives (names in `CHAOS_PRIMITIVES`) this backend can perform on this cluster.

        An experiment that needs one outside the set is refused before anything
        is injected, rather than failing half-way through a game day.
        """

    def require_capability(self, primitive: str, zone: str | None = None) -> None:
        """Refuse `primitive` (BackendError saying why) when this cluster cannot perform it.

        Called before a fault is recorded or injected, so a refused fault
        leaves no trace on the cluster or in the timeline. Backends whose
        `capabilities()` is costly for some primitives override this to check
        only the one asked for. `zone` is the zone the fault will act on, when
        known: on some clusters whether a fault can be done depends on the
        zone's nodes (EKS enforces NetworkPolicy per node, so a partition is
        possible in one zone and not in another); backends where it does not
        ignore it.
        """
        if primitive not in self.capabilities():
            raise BackendError(f"the {self.name} backend cannot {primitive} on this cluster")

    def perform(self, method: str, **args: Any) -> list[str] | None:
        """Call the chaos `method` (an inject or restore of `PRIMITIVES`) by name, with keyword arguments.

        How the chaos actions and the local daemon dispatch; a backend whose
        primitives run elsewhere (the local client) forwards the same call.
        """
        result = dispatch(self, method, args)
        return list(result) if result is not None else None

    @abstractmethod
    def kill_pod(self, zone: str, service: str) -> list[str]:
        """Kill every pod of `service` in `zone`; the Deployment re-creates them. Returns pod names."""

    @abstractmethod
    def kill_node(self, node: str) -> None:
        """Stop a node: its pods die and its links go down until `restore_node`."""

    @abstractmethod
    def restore_node(self, node: str) -> None: ...

    @abstractmethod
    def zone_outage(self, zone: str) -> None:
        """Every node of `zone` down."""

    @abstractmethod
    def restore_zone(self, zone: str) -> None: ...

    @abstractmethod
    def set_link(self, zone: str, latency_ms: float, loss_percent: float = 0.0) -> None:
        """Degrade the zone's service link to the Region."""

    @abstractmethod
    def clear_link(self, zone: str) -> None:
        """Back to the topology's service-link settings."""

    @abstractmethod
    def partition_zone(self, zone: str) -> None:
        """Cut the zone's service link (zone ↔ Region traffic fails)."""

    @abstractmethod
    def heal_zone(self, zone: str) -> None: ...

    @abstractmethod
    def set_pod_unready(self, zone: str, service: str) -> list[str]:
        """Make the pods fail readiness (they stay running)."""

    @abstractmethod
    def set_pod_ready(self, zone: str, service: str) -> list[str]: ...


class Backend(Lifecycle, Observation, Chaos):
    """What `harness up/down/status/chaos` drive, whichever cluster is behind it: the three concerns joined."""

    name: str

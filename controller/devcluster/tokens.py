"""Bearer tokens of the devcluster: static users and service-account JWTs — TokenRequest (bound
tokens), their validation for API requests, and TokenReview.

As kube-apiserver does it (k8s.io/kubernetes ``pkg/serviceaccount/{jwt,claims}.go``,
``pkg/registry/core/serviceaccount/storage/token.go``,
``pkg/registry/authentication/tokenreview/storage.go``):

- a TokenRequest defaults ``spec.audiences`` to the API server's audience and
  ``spec.expirationSeconds`` to 3600 (600 .. 2^32 allowed); ``spec.boundObjectRef`` (a Pod, Secret
  or Node) puts that object in the token's ``kubernetes.io`` claim — for a pod also its node, when
  it is scheduled (name; the uid when a Node object exists) —, and a pod-bound token of 3607
  seconds for the API server's audience lasts a year (``warnafter`` at 3607 s), as the
  API server's ``--service-account-extend-token-expiration`` does for kubelet-projected tokens;
- a token authenticates when its audiences meet the requested ones (an API request asks for the API
  server's audience), it has not expired (one minute of leeway), its ServiceAccount still exists
  with the same UID, and its bound Pod/Secret/Node still exists with the same UID (and is not
  deleted for more than a minute);
- the user is ``system:serviceaccount:NS:SA`` (uid: the ServiceAccount's) in the groups
  ``system:serviceaccounts``, ``system:serviceaccounts:NS``, ``system:authenticated``, with the
  ``authentication.kubernetes.io/{credential-id,node-name,node-uid,pod-name,pod-uid}`` extra.

Tokens are HS256-signed with a key of the process (a real server signs with ES256/RS256 keys);
nothing outside this emulator can verify them. Unlike a real server, nothing is cached: a deleted
pod's token stops authenticating at once (kube-apiserver caches a success for 10 seconds).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .codec import dumps, loads, now_rfc3339, parse_time
from .errors import ApiError, bad_request
from .rbac import UserInfo

__all__ = ["API_AUDIENCE", "ISSUER", "Auth", "Lookup", "TokenResult", "request_token", "review_token"]

API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
ISSUER = "https://kubernetes.default.svc.cluster.local"
API_AUDIENCES = (API_AUDIENCE,)
DEFAULT_EXPIRATION_SECONDS = 3600
MIN_EXPIRATION_SECONDS = 600
MAX_EXPIRATION_SECONDS = 1 << 32
WARN_ONLY_EXPIRATION_SECONDS = 3607           # what kubelets ask for their projected tokens
EXTENDED_EXPIRATION_SECONDS = 365 * 86400     # --service-account-max-token-expiration's default cap
LEEWAY_SECONDS = 60                           # go-jose jwt.DefaultLeeway
LEGACY_SECONDS = 10 * 365 * 86400             # DevCluster.service_account_token (a test credential)

CREDENTIAL_ID_KEY = "authentication.kubernetes.io/credential-id"
NODE_NAME_KEY = "authentication.kubernetes.io/node-name"
NODE_UID_KEY = "authentication.kubernetes.io/node-uid"
POD_NAME_KEY = "authentication.kubernetes.io/pod-name"
POD_UID_KEY = "authentication.kubernetes.io/pod-uid"

INVALID_BEARER_TOKEN = "invalid bearer token"
INVALIDATED = "service account token has been invalidated"

Lookup = Callable[[str, str, str], dict[str, Any] | None]
"""``lookup(resource, namespace, name)``: the stored object (read only; ``namespace`` "" for a
cluster-scoped one) of ``pods``, ``secrets``, ``serviceaccounts`` or ``nodes``, or None."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _q(s: str) -> str:
    """Go %q of a string (close enough: JSON string syntax)."""
    return json.dumps(s, ensure_ascii=False)


def _q_list(items: Iterable[str]) -> str:
    """Go %q of a []string: ``["a" "b"]``."""
    return "[" + " ".join(_q(s) for s in items) + "]"


def _intersect(have: Sequence[str], wanted: Sequence[str]) -> list[str]:
    """authenticator.Audiences(have).Intersect(wanted): the wanted ones ``have`` has, in wanted's order."""
    return [a for a in wanted if a in have]


@dataclass
class TokenResult:
    """What authenticating a token gave: the user and the audiences it is good for, or an error
    (the text of a TokenReview's ``status.error``; "" when the token is simply not one of ours)."""

    user: UserInfo | None
    audiences: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def authenticated(self) -> bool:
        return self.user is not None


def _failed(reason: str = "") -> TokenResult:
    # A real server's union of authenticators reports the bearer-token failure along with the
    # service-account authenticator's reason: "[invalid bearer token, <reason>]".
    return TokenResult(None, [], f"[{INVALID_BEARER_TOKEN}, {reason}]" if reason else INVALID_BEARER_TOKEN)


def _deleted_before(obj: dict[str, Any], limit: float) -> bool:
    ts = (obj.get("metadata") or {}).get("deletionTimestamp")
    t = parse_time(ts) if isinstance(ts, str) else None
    return t is not None and t < limit


def _uid(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


class Auth:
    """Bearer tokens: static users (audience-agnostic, like ``--token-auth-file``) and
    service-account JWTs (HS256, a key of this process)."""

    def __init__(self) -> None:
        self.key = secrets.token_bytes(32)
        self.tokens: dict[str, UserInfo] = {}
        self.names: dict[str, str] = {}
        self.admin_token = self.add_user("admin", ["system:masters"])

    def add_user(self, name: str, groups: Iterable[str] = ()) -> str:
        """Register a user; returns its bearer token."""
        token = "dev-" + secrets.token_urlsafe(24)
        gs = list(groups)
        if "system:authenticated" not in gs:
            gs.append("system:authenticated")
        self.tokens[token] = UserInfo(name, gs)
        self.names[name] = token
        return token

    # ---------------------------------------------------------------- issuing

    def sign(self, payload: dict[str, Any]) -> str:
        header = {"alg": "HS256", "kid": "devcluster", "typ": "JWT"}
        signing = _b64url(dumps(header)) + "." + _b64url(dumps(payload))
        sig = hmac.new(self.key, signing.encode(), hashlib.sha256).digest()
        return signing + "." + _b64url(sig)

    def sa_token(
        self,
        ns: str,
        sa: str,
        uid: str = "",
        *,
        audiences: Sequence[str] = API_AUDIENCES,
        expiration_seconds: int = LEGACY_SECONDS,
        bound: dict[str, dict[str, str]] | None = None,
        warn_after_seconds: int = 0,
        now: float | None = None,
    ) -> str:
        """A service-account token (JWT) of ``system:serviceaccount:ns:sa``: the claims of
        serviceaccount.Claims. ``bound``: the ``pod``/``secret``/``node`` refs ({name, uid}) of the
        ``kubernetes.io`` claim. An empty ``uid`` (a test credential minted before its
        ServiceAccount existed) accepts whichever ServiceAccount has that name."""
        t = int(time.time() if now is None else now)
        k8s: dict[str, Any] = {"namespace": ns, "serviceaccount": {"name": sa, "uid": uid}}
        for kind, ref in (bound or {}).items():
            k8s[kind] = {k: v for k, v in ref.items() if v}
        if warn_after_seconds:
            k8s["warnafter"] = t + warn_after_seconds
        payload = {
            "aud": list(audiences),
            "exp": t + expiration_seconds,
            "iat": t,
            "iss": ISSUER,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": k8s,
            "nbf": t,
            "sub": f"system:serviceaccount:{ns}:{sa}",
        }
        return self.sign(payload)

    # ---------------------------------------------------------------- validating

    def authenticate(self, token: str, lookup: Lookup) -> UserInfo | None:
        """The user of an API request's bearer ``token`` (None: 401): a token for the API
        server's audience."""
        return self.review(token, lookup).user

    def review(self, token: str, lookup: Lookup, audiences: Sequence[str] | None = None,
               now: float | None = None) -> TokenResult:
        """Authenticate ``token`` for ``audiences`` (default: the API server's), as kube-apiserver's
        authenticators do for a request and a TokenReview."""
        wanted = list(audiences or API_AUDIENCES)
        static = self.tokens.get(token)
        if static is not None:
            # audience-agnostic: good for the API server's audiences only
            auds = _intersect(API_AUDIENCES, wanted)
            return TokenResult(static, auds) if auds else _failed()
        parts = token.split(".")
        if len(parts) != 3:
            return _failed()
        try:
            claims = loads(_b64url_decode(parts[1]))
        except (ValueError, TypeError):
            return _failed()
        if not isinstance(claims, dict) or claims.get("iss") != ISSUER:
            return _failed()            # not a token of this issuer: no authenticator claims it
        try:
            sig = _b64url_decode(parts[2])
        except (ValueError, TypeError):
            sig = b""
        want = hmac.new(self.key, (parts[0] + "." + parts[1]).encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(sig, want):
            return _failed("go-jose/go-jose: error in cryptographic primitive")
        aud = claims.get("aud")
        token_auds = [aud] if isinstance(aud, str) else [str(a) for a in aud] if isinstance(aud, list) else []
        if not token_auds:
            token_auds = list(API_AUDIENCES)      # a legacy token: the API server's audiences
        auds = _intersect(token_auds, wanted)
        if not auds:
            return _failed(f"token audiences {_q_list(token_auds)} is invalid for the target audiences "
                           f"{_q_list(wanted)}")
        t = time.time() if now is None else now
        nbf, exp, iat = claims.get("nbf"), claims.get("exp"), claims.get("iat")
        if isinstance(nbf, (int, float)) and t + LEEWAY_SECONDS < nbf:
            return _failed("service account token is not valid yet")
        if isinstance(exp, (int, float)) and t - LEEWAY_SECONDS > exp:
            return _failed("service account token has expired")
        if isinstance(iat, (int, float)) and t + LEEWAY_SECONDS < iat:
            return _failed("service account token is issued in the future")
        private = claims.get("kubernetes.io")
        k8s: dict[str, Any] = private if isinstance(private, dict) else {}
        ns = str(k8s.get("namespace") or "")

        def ref(kind: str) -> dict[str, str] | None:
            r = k8s.get(kind)
            if not isinstance(r, dict):
                return None
            return {"name": str(r.get("name") or ""), "uid": str(r.get("uid") or "")}

        saref = ref("serviceaccount") or {"name": "", "uid": ""}
        invalid_if_deleted_before = t - LEEWAY_SECONDS
        sa = lookup("serviceaccounts", ns, saref["name"]) if ns and saref["name"] else None
        if sa is None:
            return _failed(f"serviceaccounts {_q(saref['name'])} not found")
        if saref["uid"] and _uid(sa) != saref["uid"]:
            return _failed(f"service account UID ({_uid(sa)}) does not match claim ({saref['uid']})")
        if _deleted_before(sa, invalid_if_deleted_before):
            return _failed(f"service account {ns}/{saref['name']} has been deleted")
        secref, podref, noderef = ref("secret"), ref("pod"), ref("node")
        def bound_problem(kind: str, resource: str, namespace: str, r: dict[str, str]) -> str | None:
            """Why the object a token is bound to no longer validates it (gone, another UID, deleting)."""
            obj = lookup(resource, namespace, r["name"])
            if obj is None:
                return INVALIDATED
            if r["uid"] != _uid(obj):
                return f"{kind} UID ({_uid(obj)}) does not match service account {kind} ref claim ({r['uid']})"
            return INVALIDATED if _deleted_before(obj, invalid_if_deleted_before) else None

        if secref is not None and (problem := bound_problem("secret", "secrets", ns, secref)) is not None:
            return _failed(problem)
        extra: dict[str, list[str]] = {}
        if podref is not None:
            if (problem := bound_problem("pod", "pods", ns, podref)) is not None:
                return _failed(problem)
            if podref["name"] and podref["uid"]:
                extra[POD_NAME_KEY] = [podref["name"]]
                extra[POD_UID_KEY] = [podref["uid"]]
        if noderef is not None:
            if podref is None and (problem := bound_problem("node", "nodes", "", noderef)) is not None:
                return _failed(problem)
            if noderef["name"]:
                extra[NODE_NAME_KEY] = [noderef["name"]]
                if noderef["uid"]:
                    extra[NODE_UID_KEY] = [noderef["uid"]]
        if claims.get("jti"):
            extra[CREDENTIAL_ID_KEY] = [f"JTI={claims['jti']}"]
        user = UserInfo(
            f"system:serviceaccount:{ns}:{saref['name']}",
            ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"],
            uid=saref["uid"] or _uid(sa),
            extra=dict(sorted(extra.items())),
        )
        return TokenResult(user, auds)


# ------------------------------------------------------------------------------------------
# the API: TokenRequest and TokenReview


def _gvk_string(api_version: str, kind: str) -> str:
    """schema.GroupVersionKind.String() of (apiVersion, kind)."""
    group, _, version = api_version.rpartition("/")
    return f"{group}/{version}, Kind={kind}"


def request_token(auth: Auth, lookup: Lookup, ns: str, name: str, body: Any) -> dict[str, Any]:
    """``POST /api/v1/namespaces/NS/serviceaccounts/NAME/token``: the TokenRequest answered (201)."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise bad_request("the body of a TokenRequest must be an object")
    meta: dict[str, Any] = body["metadata"] if isinstance(body.get("metadata"), dict) else {}
    spec: dict[str, Any] = body["spec"] if isinstance(body.get("spec"), dict) else {}
    kind = "TokenRequest.authentication.k8s.io"

    def invalid(obj_name: str, path: str, value: Any, detail: str) -> ApiError:
        shown = _q(value) if isinstance(value, str) else str(value)
        text = f"Invalid value: {shown}: {detail}"
        details: dict[str, Any] = {"group": "authentication.k8s.io", "kind": "TokenRequest",
                                   "causes": [{"reason": "FieldValueInvalid", "message": text, "field": path}]}
        if obj_name:
            details["name"] = obj_name
        return ApiError(422, "Invalid", f'{kind} "{obj_name}" is invalid: {path}: {text}', details)

    if meta.get("name") and meta["name"] != name:
        raise invalid(name, "metadata.name", meta["name"], "must match the service account name if specified")
    if meta.get("namespace") and meta["namespace"] != ns:
        raise invalid(name, "metadata.namespace", meta["namespace"],
                      "must match the service account namespace if specified")
    sa = lookup("serviceaccounts", ns, name)
    if sa is None:
        raise ApiError(404, "NotFound", f'serviceaccounts "{name}" not found',
                       {"name": name, "kind": "serviceaccounts"})
    sa_uid = _uid(sa)
    audiences = [str(a) for a in spec.get("audiences") or ()] or list(API_AUDIENCES)
    raw_exp = spec.get("expirationSeconds")
    if raw_exp is None:
        expiration = DEFAULT_EXPIRATION_SECONDS
    elif isinstance(raw_exp, int) and not isinstance(raw_exp, bool):
        expiration = raw_exp
    else:
        go_type = {"str": "string", "float": "number", "list": "array", "dict": "object", "bool": "bool"}
        raise bad_request(f'TokenRequest in version "v1" cannot be handled as a TokenRequest: json: cannot unmarshal '
                          f"{go_type.get(type(raw_exp).__name__, 'value')} into Go struct field "
                          f"TokenRequestSpec.spec.expirationSeconds of type int64")
    now = time.time()
    if expiration < MIN_EXPIRATION_SECONDS:
        raise invalid("", "spec.expirationSeconds", expiration, "may not specify a duration less than 10 minutes")
    if expiration > MAX_EXPIRATION_SECONDS:
        raise invalid("", "spec.expirationSeconds", expiration,
                      "may not specify a duration larger than 2^32 seconds")
    ref = spec.get("boundObjectRef")
    bound: dict[str, dict[str, str]] = {}
    is_pod = False
    if ref is not None:
        if not isinstance(ref, dict):
            raise bad_request("spec.boundObjectRef must be an object")
        api_version, ref_kind = str(ref.get("apiVersion") or ""), str(ref.get("kind") or "")
        ref_name, ref_uid = str(ref.get("name") or ""), str(ref.get("uid") or "")
        group = api_version.rpartition("/")[0]
        resource = {"Pod": "pods", "Secret": "secrets", "Node": "nodes"}.get(ref_kind) if group == "" else None
        if resource is None:
            raise bad_request(f"cannot bind token to object of type {_gvk_string(api_version, ref_kind)}")
        obj = lookup(resource, "" if resource == "nodes" else ns, ref_name)
        if obj is None:
            raise ApiError(404, "NotFound", f"{resource} {_q(ref_name)} not found",
                           {"name": ref_name, "kind": resource})
        if resource == "pods":
            pod_spec = obj.get("spec") or {}
            if name != (pod_spec.get("serviceAccountName") or "default"):
                raise bad_request(f"cannot bind token for serviceaccount {_q(name)} to pod running with different "
                                  f"serviceaccount name.")
            is_pod = True
            bound["pod"] = {"name": ref_name, "uid": _uid(obj)}
            node_name = str(pod_spec.get("nodeName") or "")
            if node_name:
                node = lookup("nodes", "", node_name)
                bound["node"] = {"name": node_name, "uid": _uid(node) if node is not None else ""}
        else:
            bound["secret" if resource == "secrets" else "node"] = {"name": ref_name, "uid": _uid(obj)}
        if ref_uid and ref_uid != _uid(obj):
            raise ApiError(
                409, "Conflict",
                f'Operation cannot be fulfilled on {ref_kind} "{ref_name}": the UID in the bound object reference '
                f"({ref_uid}) does not match the UID in record. The object might have been deleted and then "
                f"recreated",
                {"name": ref_name, "kind": ref_kind},
            )
    exp, warn_after = expiration, 0
    if is_pod and expiration == WARN_ONLY_EXPIRATION_SECONDS and all(a in API_AUDIENCES for a in audiences):
        exp, warn_after = EXTENDED_EXPIRATION_SECONDS, expiration
    token = auth.sa_token(ns, name, sa_uid, audiences=audiences, expiration_seconds=exp, bound=bound,
                          warn_after_seconds=warn_after, now=now)
    return {
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": ns, "uid": sa_uid, "creationTimestamp": now_rfc3339(now)},
        "spec": {"audiences": audiences, "expirationSeconds": expiration, "boundObjectRef": ref},
        "status": {"token": token, "expirationTimestamp": now_rfc3339(now + expiration)},
    }


def review_token(auth: Auth, lookup: Lookup, body: Any) -> dict[str, Any]:
    """``POST /apis/authentication.k8s.io/v1/tokenreviews``: the TokenReview answered (201)."""
    if not isinstance(body, dict):
        raise bad_request("the body of a TokenReview must be an object")
    spec: dict[str, Any] = body["spec"] if isinstance(body.get("spec"), dict) else {}
    token = spec.get("token")
    if not isinstance(token, str) or not token:
        raise bad_request("token is required for TokenReview in authentication")
    audiences = [str(a) for a in spec.get("audiences") or ()]
    result = auth.review(token, lookup, audiences or None)
    status: dict[str, Any] = {}
    user: dict[str, Any] = {}
    if result.user is not None:
        status["authenticated"] = True
        user["username"] = result.user.name
        if result.user.uid:
            user["uid"] = result.user.uid
        user["groups"] = list(result.user.groups)
        if result.user.extra:
            user["extra"] = {k: list(v) for k, v in result.user.extra.items()}
    status["user"] = user
    if result.user is not None and result.audiences:
        status["audiences"] = list(result.audiences)
    if result.error:
        status["error"] = result.error
    out = {k: v for k, v in body.items() if k not in ("apiVersion", "kind", "metadata", "status")}
    return {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
            "metadata": body.get("metadata") if isinstance(body.get("metadata"), dict) else {},
            **out, "status": status}

"""ValidatingAdmissionPolicy (``admissionregistration.k8s.io/v1``) for the devcluster API server.

The store calls :meth:`ValidatingAdmission.admit` for every CREATE and UPDATE (status and other
subresources included) made by an authenticated user, after the object passed its schema, as
kube-apiserver's validating admission runs after the rest strategy's validation. Policies and
bindings are read from the store's buckets and recompiled only when one of them changed; a request
pays for the policies whose match rules select it, nothing else (with no policy stored: one
comparison).

What is evaluated, as in ``k8s.io/apiserver/pkg/admission/plugin/policy/validating``:

- ``spec.matchConstraints`` and the binding's ``spec.matchResources``: ``resourceRules`` /
  ``excludeResourceRules`` (groups, versions, operations, ``resources`` with the ``*``,
  ``pods/*``, ``*/status``, ``*/*`` forms, ``resourceNames``, ``scope``), ``namespaceSelector``
  and ``objectSelector`` (label selectors);
- ``matchConditions`` (all must be true), ``variables`` (lazily, each at most once per request),
  ``validations`` (the first failing one decides), ``failurePolicy`` (``Fail`` default, or
  ``Ignore``) for evaluation errors;
- the binding's ``validationActions``: ``Deny`` (the request fails), ``Warn`` (a warning header),
  ``Audit`` (nothing visible here);
- the CEL variables ``object``, ``oldObject`` (null on CREATE), ``request`` (``kind``,
  ``resource``, ``subResource``, ``name``, ``namespace``, ``operation``, ``userInfo``,
  ``dryRun``), ``namespaceObject``, ``params`` (always null: parameter resources are not
  supported) and ``variables``.

Messages follow kube-apiserver 1.37 exactly::

    agents.agentcontroller.dev "a1" is forbidden: ValidatingAdmissionPolicy 'p' with binding 'b'
    denied request: <message>

where ``<message>`` is the ``messageExpression`` result, else ``message``, else
``failed expression: <expression>``; an evaluation error gives ``expression '<expression>'
resulted in error: <error>``. The HTTP status follows ``reason`` (Invalid 422 by default,
Forbidden 403, Unauthorized 401, RequestEntityTooLarge 413).

The same hook also runs the OwnerReferencesPermissionEnforcement admission plugin when
``owner_references_permission_enforcement`` is set (off by default, as in kube-apiserver; on in
OpenShift): setting ``blockOwnerDeletion: true`` on a new ownerReference needs ``update`` on the
owner's ``finalizers`` subresource, and changing the ownerReferences of an existing object needs
``delete`` on it.

Not emulated: DELETE and CONNECT requests, ``paramKind``/``paramRef``, ``auditAnnotations``,
``authorizer`` in CEL, type checking (``status.typeChecking``), ``matchPolicy: Equivalent``
across versions (rules match the request's own group/version).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cel

from .errors import ApiError, Cause, ferr
from .rbac import Attributes
from .resources import ResourceType
from .schema import _EXT_BY_SHORT, _EXT_FUNCS, SchemaError, _clean_cel_error, _compile
from .selectors import label_selector_matches
from .store import Store

__all__ = ["ADMISSION_GROUP", "POLICIES", "POLICY_BINDINGS", "ValidatingAdmission"]

ADMISSION_GROUP = "admissionregistration.k8s.io"
POLICIES = "validatingadmissionpolicies"
POLICY_BINDINGS = "validatingadmissionpolicybindings"

_REASON_CODES = {"Invalid": 422, "Forbidden": 403, "Unauthorized": 401, "RequestEntityTooLarge": 413}
_VARIABLE_USE = re.compile(r"(?<![.\w])variables\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)")


def _labels(obj: Any) -> dict[str, str]:
    if isinstance(obj, dict):
        md = obj.get("metadata")
        if isinstance(md, dict) and isinstance(md.get("labels"), dict):
            return md["labels"]
    return {}


# ----------------------------------------------------------------------------------------------
# the request


@dataclass
class Request:
    """What one admission decision is about (admission.Attributes)."""

    operation: str  # CREATE | UPDATE
    rt: ResourceType
    subresource: str
    namespace: str
    name: str
    object: dict[str, Any] | None
    old_object: dict[str, Any] | None
    username: str
    groups: list[str]
    dry_run: bool = False
    namespace_object: dict[str, Any] | None = None

    def cel_request(self) -> dict[str, Any]:
        rt = self.rt
        gvk = {"group": rt.group, "version": rt.version, "kind": rt.kind}
        gvr = {"group": rt.group, "version": rt.version, "resource": rt.plural}
        return {
            "kind": gvk,
            "resource": gvr,
            "subResource": self.subresource,
            "requestKind": gvk,
            "requestResource": gvr,
            "requestSubResource": self.subresource,
            "name": self.name,
            "namespace": self.namespace,
            "operation": self.operation,
            "userInfo": {"username": self.username, "uid": "", "groups": list(self.groups), "extra": {}},
            "dryRun": self.dry_run,
        }


# ----------------------------------------------------------------------------------------------
# match rules


class _Rule:
    """One ``NamedRuleWithOperations``."""

    __slots__ = ("groups", "names", "operations", "resources", "scope", "versions")

    def __init__(self, r: dict[str, Any]) -> None:
        self.groups = frozenset(r.get("apiGroups") or ())
        self.versions = frozenset(r.get("apiVersions") or ())
        self.operations = frozenset(r.get("operations") or ())
        self.resources = tuple(r.get("resources") or ())
        self.names = frozenset(r.get("resourceNames") or ())
        self.scope = r.get("scope") or "*"

    def matches(self, req: Request) -> bool:
        rt = req.rt
        if "*" not in self.operations and req.operation not in self.operations:
            return False
        if "*" not in self.groups and rt.group not in self.groups:
            return False
        if "*" not in self.versions and rt.version not in self.versions:
            return False
        if self.scope == "Cluster" and rt.namespaced or self.scope == "Namespaced" and not rt.namespaced:
            return False
        if self.names and req.name not in self.names:
            return False
        return any(_resource_matches(pattern, rt.plural, req.subresource) for pattern in self.resources)


def _resource_matches(pattern: str, resource: str, sub: str) -> bool:
    """Webhook/policy rule resources: ``*`` all resources (not subresources), ``pods/*`` every
    subresource of pods, ``*/status`` every status subresource, ``*/*`` everything."""
    if pattern == "*/*":
        return True
    res, _, psub = pattern.partition("/")
    if not psub:
        return not sub and (res == "*" or res == resource)
    if res != "*" and res != resource:
        return False
    return psub == "*" or psub == sub


class _Match:
    """``matchConstraints`` of a policy or ``matchResources`` of a binding."""

    __slots__ = ("exclude", "include", "ns_selector", "obj_selector")

    def __init__(self, m: Any, *, default_all: bool) -> None:
        m = m if isinstance(m, dict) else {}
        rules = m.get("resourceRules")
        self.include: list[_Rule] | None = [_Rule(r) for r in rules] if rules else (None if default_all else [])
        self.exclude = [_Rule(r) for r in m.get("excludeResourceRules") or ()]
        self.ns_selector = m.get("namespaceSelector")
        self.obj_selector = m.get("objectSelector")

    def rules_match(self, req: Request) -> bool:
        if self.include is not None and not any(r.matches(req) for r in self.include):
            return False
        return not any(r.matches(req) for r in self.exclude)

    def selectors_match(self, req: Request) -> bool:
        if self.ns_selector:
            if req.rt.namespaced:
                if not label_selector_matches(self.ns_selector, _labels(req.namespace_object)):
                    return False
            elif req.rt.group == "" and req.rt.plural == "namespaces":
                if not label_selector_matches(self.ns_selector, _labels(req.object or req.old_object)):
                    return False
        if self.obj_selector:
            objs = [o for o in (req.object, req.old_object) if o is not None]
            if not any(label_selector_matches(self.obj_selector, _labels(o)) for o in objs):
                return False
        return True


# ----------------------------------------------------------------------------------------------
# compiled CEL


class _Expr:
    """A compiled expression, the ``variables.*`` it reads and the library functions it needs."""

    __slots__ = ("funcs", "prog", "src", "uses")

    def __init__(self, src: str) -> None:
        self.src = src
        self.prog = _compile(src)
        funcs: dict[str, Callable[..., Any]] = {}
        for f in self.prog.functions():
            for full in _EXT_BY_SHORT.get(f, ()):
                funcs[full] = _EXT_FUNCS[full]
        self.funcs = funcs or None
        self.uses = tuple(dict.fromkeys(_VARIABLE_USE.findall(src)))


class _Eval:
    """One request's evaluation context: the CEL activation and the lazily computed variables."""

    def __init__(self, policy: _Policy, req: Request) -> None:
        self.policy = policy
        self.values: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self.activation: dict[str, Any] = {
            "object": req.object,
            "oldObject": req.old_object,
            "request": req.cel_request(),
            "params": None,
            "namespaceObject": req.namespace_object,
            "variables": self.values,
        }

    def _variable(self, name: str, depth: int = 0) -> None:
        if name in self.values or name in self.errors:
            return
        expr = self.policy.variables.get(name)
        if expr is None or depth > 64:
            self.errors[name] = f"undefined variable: {name}"
            return
        try:
            self.values[name] = self.run(expr, depth + 1)
        except _EvalError as e:
            self.errors[name] = e.text

    def run(self, expr: _Expr, depth: int = 0) -> Any:
        for name in expr.uses:
            self._variable(name, depth)
            if name in self.errors:
                raise _EvalError(self.errors[name])
        ctx: Any = self.activation
        if expr.funcs is not None:
            ctx = cel.Context(variables=self.activation, functions=expr.funcs)
        try:
            return expr.prog.execute(ctx)
        except Exception as e:  # noqa: BLE001 - any evaluation error is the expression's error
            raise _EvalError(_clean_cel_error(e)) from None


class _EvalError(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


@dataclass
class _Validation:
    expr: _Expr
    message: str
    message_expr: _Expr | None
    reason: str


@dataclass
class _Policy:
    name: str
    failure_ignore: bool
    match: _Match
    conditions: list[tuple[str, _Expr]]
    variables: dict[str, _Expr]
    validations: list[_Validation]
    bindings: list[_Binding] = field(default_factory=list)


@dataclass
class _Binding:
    name: str
    actions: frozenset[str]
    match: _Match | None


def _compile_policy(obj: dict[str, Any]) -> _Policy:
    spec = obj.get("spec") or {}
    conditions = [(c.get("name", ""), _Expr(c["expression"])) for c in spec.get("matchConditions") or ()]
    variables = {v["name"]: _Expr(v["expression"]) for v in spec.get("variables") or ()}
    validations = []
    for v in spec.get("validations") or ():
        mexpr = v.get("messageExpression")
        validations.append(
            _Validation(
                _Expr(v["expression"]),
                (v.get("message") or "").strip(),
                _Expr(mexpr) if isinstance(mexpr, str) and mexpr.strip() else None,
                v.get("reason") or "Invalid",
            )
        )
    return _Policy(
        obj["metadata"]["name"],
        spec.get("failurePolicy") == "Ignore",
        _Match(spec.get("matchConstraints"), default_all=False),
        conditions,
        variables,
        validations,
    )


def check_policy(obj: dict[str, Any]) -> list[Cause]:
    """Field errors of a ValidatingAdmissionPolicy (a CEL expression that does not compile)."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [ferr("spec", "FieldValueRequired")]
    errs: list[Cause] = []
    if not (spec.get("matchConstraints") or {}).get("resourceRules"):
        errs.append(ferr("spec.matchConstraints.resourceRules", "FieldValueRequired"))
    for key, field_name in (("matchConditions", "expression"), ("variables", "expression"),
                            ("validations", "expression"), ("validations", "messageExpression")):
        for i, item in enumerate(spec.get(key) or ()):
            src = item.get(field_name) if isinstance(item, dict) else None
            if src is None and field_name == "messageExpression":
                continue
            if not isinstance(src, str) or not src.strip():
                errs.append(ferr(f"spec.{key}[{i}].{field_name}", "FieldValueRequired"))
                continue
            try:
                _compile(src)
            except SchemaError as e:
                errs.append(ferr(f"spec.{key}[{i}].{field_name}", "FieldValueInvalid", src, str(e)))
    if not spec.get("validations") and not spec.get("auditAnnotations"):
        errs.append(ferr("spec.validations", "FieldValueRequired",
                         detail="validations or auditAnnotations must contain at least one item"))
    return errs


def check_binding(obj: dict[str, Any]) -> list[Cause]:
    """Field errors of a ValidatingAdmissionPolicyBinding."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [ferr("spec", "FieldValueRequired")]
    errs: list[Cause] = []
    if not spec.get("policyName"):
        errs.append(ferr("spec.policyName", "FieldValueRequired"))
    actions = spec.get("validationActions") or []
    if not actions:
        errs.append(ferr("spec.validationActions", "FieldValueRequired"))
    for i, a in enumerate(actions):
        if a not in ("Deny", "Warn", "Audit"):
            errs.append(ferr(f"spec.validationActions[{i}]", "FieldValueNotSupported", a,
                             'supported values: "Audit", "Deny", "Warn"'))
    if "Deny" in actions and "Warn" in actions:
        errs.append(ferr("spec.validationActions", "FieldValueInvalid", actions,
                         "must not contain both Deny and Warn (repeating the same validation failure information in the API response and headers serves no purpose)"))
    return errs


# ----------------------------------------------------------------------------------------------
# the plugin


class ValidatingAdmission:
    """Evaluates the ValidatingAdmissionPolicies stored in ``store`` (wired as ``store.admission``)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._version: tuple[int, int] = (-1, -1)
        self._policies: list[_Policy] = []
        self.evaluations = 0  # policies evaluated (a test checks unrelated requests cost nothing)
        self.owner_references_permission_enforcement = False

    # -- policies ------------------------------------------------------------------------------

    def _buckets_version(self) -> tuple[int, int]:
        b1 = self.store.buckets.get((ADMISSION_GROUP, POLICIES))
        b2 = self.store.buckets.get((ADMISSION_GROUP, POLICY_BINDINGS))
        return (b1.version if b1 else 0, b2.version if b2 else 0)

    def _current(self) -> list[_Policy]:
        version = self._buckets_version()
        if version == self._version:
            return self._policies
        policies: dict[str, _Policy] = {}
        pb = self.store.buckets.get((ADMISSION_GROUP, POLICIES))
        for e in (pb.objects.values() if pb else ()):
            try:
                policies[e.name] = _compile_policy(e.obj)
            except (SchemaError, KeyError, TypeError, AttributeError):
                continue  # refused at creation; never half-applied
        bb = self.store.buckets.get((ADMISSION_GROUP, POLICY_BINDINGS))
        for e in (bb.objects.values() if bb else ()):
            spec = e.obj.get("spec") or {}
            policy = policies.get(spec.get("policyName", ""))
            if policy is None:
                continue
            mr = spec.get("matchResources")
            policy.bindings.append(
                _Binding(e.name, frozenset(spec.get("validationActions") or ()),
                         _Match(mr, default_all=True) if mr else None)
            )
        self._policies = [p for p in policies.values() if p.bindings]
        self._version = version
        return self._policies

    def check(self, plural: str, obj: dict[str, Any]) -> list[Cause]:
        """Field errors of a policy or binding being written (the store's validation hook)."""
        if plural == POLICIES:
            return check_policy(obj)
        if plural == POLICY_BINDINGS:
            return check_binding(obj)
        return []

    # -- admission -----------------------------------------------------------------------------

    def admit(
        self,
        rt: ResourceType,
        operation: str,
        subresource: str,
        obj: dict[str, Any] | None,
        old: dict[str, Any] | None,
        user: Any,
        *,
        dry_run: bool = False,
        warnings: list[str] | None = None,
    ) -> None:
        """Raise the :class:`ApiError` of the first denying binding; append Warn messages."""
        if user is None:  # the emulator's own writes (DevCluster helpers, node simulation)
            return
        if self.owner_references_permission_enforcement and obj is not None:
            self._owner_references(rt, operation, obj, old, user)
        if self._version == self._buckets_version() and not self._policies:
            return
        policies = self._current()
        if not policies:
            return
        src = obj if obj is not None else old
        md = (src or {}).get("metadata") or {}
        ns = md.get("namespace", "") if rt.namespaced else ""
        req = Request(operation, rt, subresource, ns, md.get("name", ""), obj, old,
                      getattr(user, "name", ""), list(getattr(user, "groups", ()) or ()), dry_run)
        ns_loaded = False
        for policy in policies:
            if not policy.match.rules_match(req):
                continue
            if rt.namespaced and not ns_loaded:
                ns_loaded = True
                e = self.store.buckets[("", "namespaces")].objects.get(("", ns))
                req.namespace_object = e.obj if e is not None else None
            if not policy.match.selectors_match(req):
                continue
            for binding in policy.bindings:
                if binding.match is not None and not (
                    binding.match.rules_match(req) and binding.match.selectors_match(req)
                ):
                    continue
                self.evaluations += 1
                failure = self._evaluate(policy, req)
                if failure is None:
                    continue
                reason, message = failure
                text = f"ValidatingAdmissionPolicy '{policy.name}' with binding '{binding.name}' denied request: {message}"
                if "Warn" in binding.actions and warnings is not None:
                    warnings.append(
                        f"Validation failed for ValidatingAdmissionPolicy '{policy.name}' with binding "
                        f"'{binding.name}': {message}"
                    )
                if "Deny" in binding.actions:
                    details: dict[str, Any] = {"name": req.name, "kind": rt.plural, "causes": [{"message": text}]}
                    if rt.group:
                        details = {"name": req.name, "group": rt.group, "kind": rt.plural,
                                   "causes": [{"message": text}]}
                    raise ApiError(
                        _REASON_CODES.get(reason, 422),
                        reason,
                        f'{rt.qualified} "{req.name}" is forbidden: {text}',
                        details,
                    )

    def _owner_references(self, rt: ResourceType, operation: str, obj: dict[str, Any],
                          old: dict[str, Any] | None, user: Any) -> None:
        """OwnerReferencesPermissionEnforcement (plugin/pkg/admission/gc), with its messages."""
        az = self.store.authorizer
        if az is None or "system:masters" in (getattr(user, "groups", None) or ()):
            return
        md = obj.get("metadata") or {}
        refs = md.get("ownerReferences") or []
        old_refs = ((old or {}).get("metadata") or {}).get("ownerReferences") or []
        if refs == old_refs:
            return
        ns = md.get("namespace", "") if rt.namespaced else ""
        name = md.get("name", "")
        details: dict[str, Any] = {"name": name, "kind": rt.plural}
        if rt.group:
            details = {"name": name, "group": rt.group, "kind": rt.plural}
        if operation == "UPDATE":  # whoever creates a thing may own it to anything
            ok, _ = az.authorize(user, Attributes(verb="delete", api_group=rt.group, resource=rt.plural,
                                                  namespace=ns, name=name))
            if not ok:
                raise ApiError(403, "Forbidden", f'{rt.qualified} "{name}" is forbidden: cannot set an ownerRef '
                               "on a resource you can't delete: , <nil>", details)
        blocking_before = {r.get("uid") for r in old_refs if isinstance(r, dict) and r.get("blockOwnerDeletion")}
        for ref in refs:
            if not isinstance(ref, dict) or not ref.get("blockOwnerDeletion") or ref.get("uid") in blocking_before:
                continue
            owner = self.store.type_for_kind(ref.get("apiVersion", ""), ref.get("kind", ""))
            ok = False
            if owner is not None:
                ok, _ = az.authorize(user, Attributes(
                    verb="update", api_group=owner.group, resource=owner.plural, subresource="finalizers",
                    namespace=ns if owner.namespaced else "", name=ref.get("name", "")))
            if not ok:
                raise ApiError(403, "Forbidden", f'{rt.qualified} "{name}" is forbidden: cannot set '
                               "blockOwnerDeletion if an ownerReference refers to a resource you can't set "
                               "finalizers on: , <nil>", details)

    def _evaluate(self, policy: _Policy, req: Request) -> tuple[str, str] | None:
        """(reason, message) of the first failing validation, or None if the request passes."""
        ev = _Eval(policy, req)
        for name, cond in policy.conditions:
            try:
                ok = ev.run(cond)
            except _EvalError as e:
                if policy.failure_ignore:
                    return None
                return "Invalid", f"failed to evaluate match condition {name!r}: {e.text}"
            if ok is not True:
                return None
        for v in policy.validations:
            try:
                ok = ev.run(v.expr)
            except _EvalError as e:
                if policy.failure_ignore:
                    continue
                return "Invalid", f"expression '{v.expr.src}' resulted in error: {e.text}"
            if ok is True:
                continue
            if ok is not False:
                if policy.failure_ignore:
                    continue
                return "Invalid", f"expression '{v.expr.src}' resulted in error: validation expression must evaluate to bool"
            message = v.message or f"failed expression: {v.expr.src.strip()}"
            if v.message_expr is not None:
                try:
                    m = ev.run(v.message_expr)
                except _EvalError:
                    m = None
                if isinstance(m, str) and m.strip() and "\n" not in m:
                    message = m.strip()
            return v.reason, message
        return None

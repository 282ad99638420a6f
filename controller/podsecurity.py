"""Pod security of the pods built from Agents: the Pod Security Standards, plus our own controls.

Pure (no I/O). Creating an Agent must not mean creating any pod: the controller holds the pod it
builds to a level (``--pod-security``, default ``restricted``), and a ``podTemplate`` asking for
more ends the Agent ``Failed``, reason ``InvalidSpec``, naming the field.

- :data:`CONTROLS` is the policy table: one :class:`Control` per Pod Security Standards control
  (https://kubernetes.io/docs/concepts/security/pod-security-standards/, policy version 1.37)
  and per control of our own, each with the lowest level that enforces it. A control enforced at
  ``baseline`` is enforced at ``restricted`` too; ``privileged`` enforces nothing but the
  structural rules every pod must follow anyway.
- :func:`violations` checks a PodSpec (and the pod's annotations) against a level; every violation
  names the field, as the user wrote it (``spec.podTemplate.spec.initContainers[0]...``).
- :func:`container_defaults` / :func:`pod_defaults` merge our restricted defaults under what the
  user set (field by field), so a container from ``podTemplate`` passes ``restricted`` unless it
  asks otherwise; :func:`merge_security_context` is that merge.
- :func:`check_depth` and :func:`quantity_error` guard against hostile shapes (a template nested
  hundreds of levels deep must give ``InvalidSpec``, never ``RecursionError``; ``cpu: lots`` is
  not a quantity).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

PRIVILEGED = "privileged"
BASELINE = "baseline"
RESTRICTED = "restricted"
LEVELS = (PRIVILEGED, BASELINE, RESTRICTED)
_RANK = {PRIVILEGED: 0, BASELINE: 1, RESTRICTED: 2}
DEFAULT_LEVEL = RESTRICTED

# Pod Security Standards, policy version latest (1.37).
BASELINE_CAPABILITIES = frozenset({
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
})
RESTRICTED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
SAFE_SYSCTLS = frozenset({
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem",
})
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
RESTRICTED_VOLUME_TYPES = frozenset({
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
})
APPARMOR_TYPES = frozenset({"RuntimeDefault", "Localhost"})
SECCOMP_RESTRICTED_TYPES = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"
SECCOMP_POD_ANNOTATION = "seccomp.security.alpha.kubernetes.io/pod"
SECCOMP_CONTAINER_ANNOTATION = "container.seccomp.security.alpha.kubernetes.io/"

# What the controller sets on every container and on the pod unless the user set it.
RESTRICTED_CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_POD_SECURITY: dict[str, Any] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}

CONTAINER_LISTS = ("initContainers", "containers")

# Kubernetes' resource.Quantity syntax (the pattern controller-gen puts in CRDs).
QUANTITY = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
MAX_DEPTH = 32  # levels below spec.podTemplate; a real PodSpec needs about 12


@dataclass(frozen=True)
class Control:
    """One row of the policy table."""

    id: str
    title: str  # the Pod Security Standards name, or ours
    level: str  # the lowest level that enforces it (baseline or restricted)
    source: str  # "Pod Security Standards" or "agent-controller"
    fields: str  # the fields it restricts
    allowed: str  # what is allowed where it is enforced


PSS = "Pod Security Standards"
OURS = "agent-controller"

CONTROLS: tuple[Control, ...] = (
    Control("hostProcess", "HostProcess", BASELINE, PSS,
            "spec.securityContext.windowsOptions.hostProcess, <container>.securityContext.windowsOptions.hostProcess",
            "unset or false"),
    Control("hostNamespaces", "Host Namespaces", BASELINE, PSS,
            "spec.hostNetwork, spec.hostPID, spec.hostIPC", "unset or false"),
    Control("privileged", "Privileged Containers", BASELINE, PSS,
            "<container>.securityContext.privileged", "unset or false"),
    Control("capabilitiesBaseline", "Capabilities", BASELINE, PSS,
            "<container>.securityContext.capabilities.add",
            "only " + ", ".join(sorted(BASELINE_CAPABILITIES))),
    Control("hostPathVolumes", "HostPath Volumes", BASELINE, PSS, "spec.volumes[*].hostPath", "unset"),
    Control("hostPorts", "Host Ports", BASELINE, PSS, "<container>.ports[*].hostPort", "unset or 0"),
    Control("appArmor", "AppArmor", BASELINE, PSS,
            "spec.securityContext.appArmorProfile.type, <container>.securityContext.appArmorProfile.type, "
            "annotations container.apparmor.security.beta.kubernetes.io/*",
            "unset, RuntimeDefault or Localhost (annotations: runtime/default, localhost/*)"),
    Control("seLinux", "SELinux", BASELINE, PSS,
            "seLinuxOptions.type, .user, .role of the pod and of every container",
            "type unset, container_t, container_init_t, container_kvm_t or container_engine_t; user and role unset"),
    Control("procMountBaseline", "/proc Mount Type", BASELINE, PSS,
            "<container>.securityContext.procMount", "unset or Default; Unmasked only with spec.hostUsers: false"),
    Control("seccompBaseline", "Seccomp", BASELINE, PSS,
            "spec.securityContext.seccompProfile.type, <container>.securityContext.seccompProfile.type",
            "anything but Unconfined"),
    Control("sysctls", "Sysctls", BASELINE, PSS, "spec.securityContext.sysctls[*].name",
            "only " + ", ".join(sorted(SAFE_SYSCTLS))),
    Control("volumeTypes", "Volume Types", RESTRICTED, PSS, "spec.volumes[*]",
            "only " + ", ".join(sorted(RESTRICTED_VOLUME_TYPES))),
    Control("procMountRestricted", "/proc Mount Type", RESTRICTED, PSS,
            "<container>.securityContext.procMount", "unset or Default"),
    Control("allowPrivilegeEscalation", "Privilege Escalation", RESTRICTED, PSS,
            "<container>.securityContext.allowPrivilegeEscalation", "false"),
    Control("runAsNonRoot", "Running as Non-root", RESTRICTED, PSS,
            "spec.securityContext.runAsNonRoot, <container>.securityContext.runAsNonRoot",
            "true on the pod or on every container, false nowhere (not checked with spec.hostUsers: false)"),
    Control("runAsUser", "Running as Non-root user", RESTRICTED, PSS,
            "spec.securityContext.runAsUser, <container>.securityContext.runAsUser",
            "unset or not 0 (not checked with spec.hostUsers: false)"),
    Control("seccompRestricted", "Seccomp", RESTRICTED, PSS,
            "spec.securityContext.seccompProfile.type, <container>.securityContext.seccompProfile.type",
            "RuntimeDefault or Localhost, on the pod or on every container"),
    Control("capabilitiesRestricted", "Capabilities", RESTRICTED, PSS,
            "<container>.securityContext.capabilities", "drop includes ALL; add only NET_BIND_SERVICE"),
    Control("nodeName", "Node name", BASELINE, OURS, "spec.nodeName",
            "unset (the scheduler places the pod: taints, quotas and node restrictions apply)"),
    Control("serviceAccount", "Service account", BASELINE, OURS,
            "spec.serviceAccountName, spec.serviceAccount",
            "unset or the agent's own (<agent>-agent): another account's permissions and token are not the Agent creator's to use"),
    Control("automountServiceAccountToken", "Service account token", BASELINE, OURS,
            "spec.automountServiceAccountToken",
            "unset or true: the pod carries its own account's token, nothing else (projected serviceAccountToken volumes are the pod's own account too)"),
)
CONTROLS_BY_ID = {c.id: c for c in CONTROLS}


def enforced(control: Control, level: str) -> bool:
    """Whether ``level`` enforces ``control``."""
    return _RANK[level] >= _RANK[control.level]


def check_level(level: str) -> str:
    if level not in _RANK:
        raise ValueError(f"unknown pod security level {level!r}: restricted, baseline or privileged")
    return level


@dataclass(frozen=True)
class Violation:
    control: Control
    field: str
    detail: str

    def __str__(self) -> str:
        return (f"{self.field}: {self.detail} ({self.control.title}: {self.control.allowed}; "
                f"{self._where()})")

    def _where(self) -> str:
        if self.control.level == RESTRICTED:
            return "not allowed at --pod-security restricted, allowed at baseline or privileged"
        return "allowed only at --pod-security privileged"


# ----------------------------------------------------------------------------------------------
# paths: where a field of the checked pod came from, as the user wrote it


class Paths:
    """Maps the checked PodSpec's containers and volumes to the path the user wrote them at."""

    def __init__(self, prefix: str = "spec",
                 containers: Mapping[tuple[str, str], str] | None = None,
                 volumes: Mapping[str, str] | None = None,
                 own_service_account: str = "") -> None:
        self.prefix = prefix
        self.own_service_account = own_service_account  # the account the pod may name
        self._containers = dict(containers or {})
        self._volumes = dict(volumes or {})

    def pod(self, field: str) -> str:
        return f"{self.prefix}.{field}"

    def container(self, list_key: str, index: int, name: str) -> str:
        return self._containers.get((list_key, name), f"{self.prefix}.{list_key}[{index}]")

    def volume(self, index: int, name: str) -> str:
        return self._volumes.get(name, f"{self.prefix}.volumes[{index}]")


def _containers(spec: Mapping[str, Any], paths: Paths) -> Iterator[tuple[str, dict[str, Any]]]:
    for key in (*CONTAINER_LISTS, "ephemeralContainers"):
        items = spec.get(key)
        if isinstance(items, list):
            for i, c in enumerate(items):
                if isinstance(c, dict):
                    yield paths.container(key, i, str(c.get("name", ""))), c


def _sc(obj: Mapping[str, Any]) -> dict[str, Any]:
    sc = obj.get("securityContext")
    return sc if isinstance(sc, dict) else {}


def _get(d: Mapping[str, Any], *keys: str) -> Any:
    cur: Any = d
    for k in keys:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(k)
    return cur


# ----------------------------------------------------------------------------------------------
# checks: one function per control, yielding (field, detail)

Finding = tuple[str, str]
Check = Callable[[Mapping[str, Any], Mapping[str, str], Paths], Iterator[Finding]]


def _host_process(spec: Mapping[str, Any], ann: Mapping[str, str], p: Paths) -> Iterator[Finding]:
    if _get(_sc(spec), "windowsOptions", "hostProcess") is True:
        yield p.pod("securityContext.windowsOptions.hostProcess"), "must not be true"
    for path, c in _containers(spec, p):
        if _get(_sc(c), "windowsOptions", "hostProcess") is True:
            yield f"{path}.securityContext.windowsOptions.hostProcess", "must not be true"


def _host_namespaces(spec: Mapping[str, Any], ann: Mapping[str, str], p: Paths) -> Iterator[Finding]:
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key) is True:
            yield p.pod(key), "must not be true"


def _privileged(spec: Mapping[str, Any], ann: Mapping[str, str], p: Paths) -> Iterator[Finding]:
    for path, c in _containers(spec, p):
        if _sc(c).get("privileged") is True:
            yield f"{path}.securityContext.privileged", "must not be true"


def _adds(c: Mapping[str, Any]) -> list[Any]:
    add = _get(_sc(c), "capabilities", "add")
    return add if isinstance(add, list) else []


def _capabilities_baseline(spec: Mapping[str, Any], ann: Mapping[str, str], p: Paths) -> Iterator[Finding]:
    for path, c in _containers(spec, p):
        bad = [a for a in _adds(c) if a not in BASELINE_CAPABILITIES]
        if bad:
            yield f"{path}.securityContext.capabilities.add", f"must not add {', '.join(map(str, bad))}"


def _volumes(spec: Mapping[str, Any], p: Paths) -> Iterator[tuple[str, dict[str, Any]]]:
    items = spec.get("volumes")
    if isinstance(items, list):
        for i, v in enumerate(items):
            if isinstance(v, dict):
                yield p.volume(i, str(v.get("name", ""))), v


def _host_path(spec: Mapping[str, Any], ann: Mapping[str, str], p: Paths) -> Iterator[Finding]:
    for path, v in _volumes(spec, p):
        if v.get("hostPath") is not None:
            yield f"{path}.hostPath", "hostPath volumes are not allowed"


def _host_ports(spec: Mapping[str, Any], ann: Mapping[str, str], p: Paths) -> Iterator[Finding]:
    for path, c in _containers(spec, p):
        ports = c.get("ports")
        for i, port in enumerate(ports if isinstance(ports, list) else ()):
            if isinstance(port, dict) and port.get("hostPort") not in (None, 0):
                yield f"{path}.ports[{i}].hostPort", "must be unset or 0"


def _app_armor(spec: Mapping[str, Any], ann: Mapping[str, str], p: Paths) -> Iterator[Finding]:
    t = _get(_sc(spec), "appArmorProfile", "type")
    if t is not None and t not in APPARMOR_TYPES:
        yield p.pod("securityContext.appArmorProfile.type"), f"must not be {t}"
    for path, c in _containers(spec, p):
        t = _get(_sc(c), "appArmorProfile", "type")
        if t is not None and t not in APPARMOR_TYPES:
            yield f"{path}.securityContext.appArmorProfile.type", f"must not be {t}"
    for key, value in ann.items():
        if key.startswith(APPARMOR_ANNOTATION) and not (value == "runtime/default" or str(value).startswith("localhost/")):
            yield f"spec.podTemplate.metadata.annotations[{key}]", f"must not be {value}"


def _se_linux(spec: Mapping[str, Any], ann: Mapping[str, str], p: Paths) -> Iterator[Finding]:
    targets = [(p.pod("securityContext.seLinuxOptions"), _sc(spec).get("seLinuxOptions"))]
    targets += [(f"{path}.securityContext.seLinuxOptions", _sc(c).get("seLinuxOptions")) for path, c in _containers(spec, p)]
    for path, opts in targets:
        if not isinstance(opts, dict):
            continue
        if opts.get("type", "") not in SELINUX_TYPES:
            yield f"{path}.type", f"must not be {opts.get('type')}"
        for key in ("user", "role"):
            if opts.get(key):
                yield f"{path}.{key}", "must be unset"


def _proc_mount_baseline(spec: Mapping[str, Any], ann: Mapping[str, str], p: Paths) -> Iterator[Finding]:
    if spec.get("hostUsers") is False:  # a user namespace: Unmasked is allowed at baseline
        return
    yield from _proc_mount_restricted(spec, ann, p)


def _proc_mount_restricted(spec: Mapping[str, Any], ann: Mapping[str, str], p: Paths) -> Iterator[Finding]:
    for path, c in _containers(spec, p):
        if _sc(c).get("procMount") not in (None, "Default"):
            yield f"{path}.securityContext.procMount", f"must not be {_sc(c).get('procMount')}"


def _seccomp_baseline(spec: Mapping[str, Any], ann: Mapping[str, str], p: Paths) -> Iterator[Finding]:
    if _get(_sc(spec), "seccompProfile", "type") == "Unconfined":
        yield p.pod("securityContext.seccompProfile.type"), "must not be Unconfined"
    for path, c in _containers(spec, p):
        if _get(_sc(c), "seccompProfile", "type") == "Unconfined":
            yield f"{path}.securityContext.seccompProfile.type", "must not be Unconfined"
    for key, value in ann.items():
        if (key == SECCOMP_POD_ANNOTATION or key.startswith(SECCOMP_CONTAINER_ANNOTATION)) and value == "unconfined":
            yield f"spec.podTemplate.metadata.annotations[{key}]", "must not be unconfined"


def _sysctls(spec: Mapping[str, Any], ann: Mapping[str, str], p: Paths) -> Iterator[Finding]:
    items = _sc(spec).get("sysctls")
    for i, s in enumerate(items if isinstance(items, list) else ()):
        name = s.get("name") if isinstance(s, dict) else None
        if name not in SAFE_SYSCTLS:
            yield p.pod(f"securityContext.sysctls[{i}].name"), f"must not be {name}"


def _volume_types(spec: Mapping[str, Any], ann: Mapping[str, str], p: Paths) -> Iterator[Finding]:
    for path, v in _volumes(spec, p):
        kinds = [k for k in v if k != "name"]
        bad = [k for k in kinds if k not in RESTRICTED_VOLUME_TYPES]
        if bad:
            yield f"{path}.{bad[0]}", f"{bad[0]} volumes are not allowed"


def _privilege_escalation(spec: Mapping[str, Any], ann: Mapping[str, str], p: Paths) -> Iterator[Finding]:
    for path, c in _containers(spec, p):
        if _sc(c).get("allowPrivilegeEscalation") is not False:
            yield f"{path}.securityContext.allowPrivilegeEscalation", "must be false"


def _run_as_non_root(spec: Mapping[str, Any], ann: Mapping[str, str], p: Paths) -> Iterator[Finding]:
    if spec.get("hostUsers") is False:  # root in a user namespace is not root on the node
        return
    pod_value = _sc(spec).get("runAsNonRoot")
    if pod_value is False:
        yield p.pod("securityContext.runAsNonRoot"), "must not be false"
    for path, c in _containers(spec, p):
        value = _sc(c).get("runAsNonRoot")
        if value is False:
            yield f"{path}.securityContext.runAsNonRoot", "must not be false"
        elif value is None and pod_value is not True:
            yield f"{path}.securityContext.runAsNonRoot", "must be true (here or on the pod)"


def _run_as_user(spec: Mapping[str, Any], ann: Mapping[str, str], p: Paths) -> Iterator[Finding]:
    if spec.get("hostUsers") is False:
        return
    if _sc(spec).get("runAsUser") == 0:
        yield p.pod("securityContext.runAsUser"), "must not be 0"
    for path, c in _containers(spec, p):
        if _sc(c).get("runAsUser") == 0:
            yield f"{path}.securityContext.runAsUser", "must not be 0"


def _seccomp_restricted(spec: Mapping[str, Any], ann: Mapping[str, str], p: Paths) -> Iterator[Finding]:
    pod_type = _get(_sc(spec), "seccompProfile", "type")
    if pod_type is not None and pod_type not in SECCOMP_RESTRICTED_TYPES:
        yield p.pod("securityContext.seccompProfile.type"), f"must be RuntimeDefault or Localhost, not {pod_type}"
    for path, c in _containers(spec, p):
        t = _get(_sc(c), "seccompProfile", "type")
        if t is None:
            if pod_type not in SECCOMP_RESTRICTED_TYPES:
                yield f"{path}.securityContext.seccompProfile.type", "must be RuntimeDefault or Localhost (here or on the pod)"
        elif t not in SECCOMP_RESTRICTED_TYPES:
            yield f"{path}.securityContext.seccompProfile.type", f"must be RuntimeDefault or Localhost, not {t}"


def _capabilities_restricted(spec: Mapping[str, Any], ann: Mapping[str, str], p: Paths) -> Iterator[Finding]:
    for path, c in _containers(spec, p):
        drop = _get(_sc(c), "capabilities", "drop")
        if not (isinstance(drop, list) and "ALL" in drop):
            yield f"{path}.securityContext.capabilities.drop", "must include ALL"
        bad = [a for a in _adds(c) if a not in RESTRICTED_CAPABILITIES]
        if bad:
            yield f"{path}.securityContext.capabilities.add", f"must not add {', '.join(map(str, bad))}"


def _node_name(spec: Mapping[str, Any], ann: Mapping[str, str], p: Paths) -> Iterator[Finding]:
    if spec.get("nodeName"):
        yield p.pod("nodeName"), "must be unset"


def _service_account(spec: Mapping[str, Any], ann: Mapping[str, str], p: Paths) -> Iterator[Finding]:
    own = p.own_service_account
    for key in ("serviceAccountName", "serviceAccount"):
        value = spec.get(key)
        if value not in (None, "", own):
            yield p.pod(key), f"must not name another ServiceAccount ({value})"


def _automount(spec: Mapping[str, Any], ann: Mapping[str, str], p: Paths) -> Iterator[Finding]:
    if spec.get("automountServiceAccountToken") is False:
        yield p.pod("automountServiceAccountToken"), "must not be false (the agent reports its status with its token)"


CHECKS: dict[str, Check] = {
    "hostProcess": _host_process,
    "hostNamespaces": _host_namespaces,
    "privileged": _privileged,
    "capabilitiesBaseline": _capabilities_baseline,
    "hostPathVolumes": _host_path,
    "hostPorts": _host_ports,
    "appArmor": _app_armor,
    "seLinux": _se_linux,
    "procMountBaseline": _proc_mount_baseline,
    "procMountRestricted": _proc_mount_restricted,
    "seccompBaseline": _seccomp_baseline,
    "sysctls": _sysctls,
    "volumeTypes": _volume_types,
    "allowPrivilegeEscalation": _privilege_escalation,
    "runAsNonRoot": _run_as_non_root,
    "runAsUser": _run_as_user,
    "seccompRestricted": _seccomp_restricted,
    "capabilitiesRestricted": _capabilities_restricted,
    "nodeName": _node_name,
    "serviceAccount": _service_account,
    "automountServiceAccountToken": _automount,
}
assert set(CHECKS) == set(CONTROLS_BY_ID)


def violations(
    spec: Mapping[str, Any],
    level: str,
    *,
    annotations: Mapping[str, str] | None = None,
    paths: Paths | None = None,
    controls: tuple[Control, ...] = CONTROLS,
) -> list[Violation]:
    """Every violation of ``level`` by the PodSpec ``spec`` (pod annotations: ``annotations``;
    ``paths``: where the user wrote each part, and the pod's own ServiceAccount)."""
    check_level(level)
    p = paths or Paths()
    ann: Mapping[str, str] = annotations or {}
    out: list[Violation] = []
    for control in controls:
        if not enforced(control, level):
            continue
        for field, detail in CHECKS[control.id](spec, ann, p):
            out.append(Violation(control, field, detail))
    return out


def pss_violations(spec: Mapping[str, Any], level: str, annotations: Mapping[str, str] | None = None) -> list[Violation]:
    """Only the Pod Security Standards controls (what Pod Security Admission would say)."""
    return violations(spec, level, annotations=annotations,
                      controls=tuple(c for c in CONTROLS if c.source == PSS))


# ----------------------------------------------------------------------------------------------
# defaults


def merge_security_context(defaults: Mapping[str, Any], user: Mapping[str, Any]) -> dict[str, Any]:
    """``user`` over ``defaults``, field by field (nested objects merged too): what the user set
    stays, what they did not set gets our default."""
    out: dict[str, Any] = {k: _copy(v) for k, v in defaults.items()}
    for key, value in user.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_security_context(out[key], value)
        else:
            out[key] = _copy(value)
    return out


def container_defaults(container: Mapping[str, Any]) -> dict[str, Any]:
    """The container with our restricted defaults under its own securityContext.

    The API refuses ``allowPrivilegeEscalation: false`` together with ``privileged: true`` or an
    added ``CAP_SYS_ADMIN``: there (allowed only at ``privileged``) that default is left out."""
    out = dict(container)
    user = _sc(container)
    defaults = RESTRICTED_CONTAINER_SECURITY
    adds = _get(user, "capabilities", "add")
    if user.get("privileged") is True or (isinstance(adds, list) and "CAP_SYS_ADMIN" in adds):
        defaults = {k: v for k, v in defaults.items() if k != "allowPrivilegeEscalation"}
    out["securityContext"] = merge_security_context(defaults, user)
    return out


def pod_defaults(user_security: Mapping[str, Any]) -> dict[str, Any]:
    return merge_security_context(RESTRICTED_POD_SECURITY, user_security)


def _copy(v: Any) -> Any:
    """Copy of a JSON value whose depth :func:`check_depth` has bounded."""
    if isinstance(v, dict):
        return {k: _copy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_copy(x) for x in v]
    return v


# ----------------------------------------------------------------------------------------------
# hostile shapes


def check_depth(value: Any, limit: int = MAX_DEPTH) -> str | None:
    """The path (relative, e.g. ``spec.affinity.x.x``) of the first value nested deeper than
    ``limit`` levels, or None. Iterative: never recurses, whatever the depth."""
    stack: list[tuple[Any, int, str]] = [(value, 0, "")]
    while stack:
        v, depth, path = stack.pop()
        if depth > limit:
            return path
        if isinstance(v, dict):
            for k, x in v.items():
                if isinstance(x, (dict, list)):
                    stack.append((x, depth + 1, f"{path}.{k}" if path else str(k)))
        elif isinstance(v, list):
            for i, x in enumerate(v):
                if isinstance(x, (dict, list)):
                    stack.append((x, depth + 1, f"{path}[{i}]"))
    return None


def quantity_error(value: Any) -> str | None:
    """Why ``value`` is not a valid, non-negative resource quantity (None if it is one)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return f"must be a quantity (e.g. 500m, 1Gi, 2), not {type(value).__name__}"
    if isinstance(value, (int, float)):
        return "must not be negative" if value < 0 else None
    if not QUANTITY.match(value):
        return f"{value!r} is not a quantity (e.g. 500m, 1Gi, 2)"
    if value.startswith("-") and value.strip("-0.") != "":
        return "must not be negative"
    return None


def table_markdown() -> str:
    """The policy table as Markdown (docs)."""
    lines = ["| control | source | enforced at | fields | allowed where enforced |", "|---|---|---|---|---|"]
    for c in CONTROLS:
        at = "restricted" if c.level == RESTRICTED else "baseline, restricted"
        lines.append(f"| {c.title} | {c.source} | {at} | {c.fields} | {c.allowed} |")
    return "\n".join(lines)

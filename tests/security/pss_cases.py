"""Pod Security Standards cases: one or more per control, each with the strictest level that
still admits it. The same table drives the pure unit test of controller/podsecurity.py
(tests/unit/test_podsecurity.py) and its conformance test against a real API server's Pod
Security Admission (tests/security/test_pod_security_admission.py).

A case is a function that changes a pod which passes `restricted` (BASE), plus the expected
level: "restricted" (admitted everywhere), "baseline" (violates restricted only) or "privileged"
(violates baseline), and the field podsecurity names for it (None when admitted)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

RESTRICTED_SC = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
                 "seccompProfile": {"type": "RuntimeDefault"}}


def base() -> dict[str, Any]:
    return {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "initContainers": [{"name": "init", "image": "busybox:1", "securityContext": copy.deepcopy(RESTRICTED_SC)}],
        "containers": [{"name": "main", "image": "busybox:1", "securityContext": copy.deepcopy(RESTRICTED_SC)}],
    }


@dataclass
class Case:
    id: str
    change: Callable[[dict[str, Any]], Any]
    level: str  # strictest level that admits the pod
    field: str | None = None  # field named by podsecurity (first violation), relative to the PodSpec

    def spec(self) -> dict[str, Any]:
        s = base()
        self.change(s)
        return s


def sc(s: dict[str, Any], which: str = "containers") -> dict[str, Any]:
    return s[which][0]["securityContext"]  # type: ignore[no-any-return]


def setp(d: dict[str, Any], path: str, value: Any) -> None:
    keys = path.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


CASES: list[Case] = [
    Case("base", lambda s: None, "restricted"),
    # HostProcess
    Case("hostProcess-pod", lambda s: (setp(s, "securityContext.windowsOptions.hostProcess", True),
                                       s.update(hostNetwork=True)),  # the API wants both
         "privileged", "spec.securityContext.windowsOptions.hostProcess"),
    Case("hostProcess-false", lambda s: setp(sc(s), "windowsOptions.hostProcess", False), "restricted"),
    # Host namespaces
    Case("hostNetwork", lambda s: s.update(hostNetwork=True), "privileged", "spec.hostNetwork"),
    Case("hostPID", lambda s: s.update(hostPID=True), "privileged", "spec.hostPID"),
    Case("hostIPC", lambda s: s.update(hostIPC=True), "privileged", "spec.hostIPC"),
    Case("hostNetwork-false", lambda s: s.update(hostNetwork=False), "restricted"),
    # Privileged
    # (the API refuses privileged: true with allowPrivilegeEscalation: false)
    Case("privileged", lambda s: (sc(s).update(privileged=True), sc(s).pop("allowPrivilegeEscalation")),
         "privileged", "spec.containers[0].securityContext.privileged"),
    Case("privileged-init", lambda s: (sc(s, "initContainers").update(privileged=True),
                                       sc(s, "initContainers").pop("allowPrivilegeEscalation")),
         "privileged", "spec.initContainers[0].securityContext.privileged"),
    Case("privileged-false", lambda s: sc(s).update(privileged=False), "restricted"),
    # Capabilities
    Case("cap-add-net-admin", lambda s: sc(s)["capabilities"].update(add=["NET_ADMIN"]), "privileged",
         "spec.containers[0].securityContext.capabilities.add"),
    Case("cap-add-sys-admin-init", lambda s: sc(s, "initContainers")["capabilities"].update(add=["SYS_ADMIN"]),
         "privileged", "spec.initContainers[0].securityContext.capabilities.add"),
    Case("cap-add-chown", lambda s: sc(s)["capabilities"].update(add=["CHOWN"]), "baseline",
         "spec.containers[0].securityContext.capabilities.add"),
    Case("cap-add-net-bind", lambda s: sc(s)["capabilities"].update(add=["NET_BIND_SERVICE"]), "restricted"),
    Case("cap-no-drop-all", lambda s: sc(s).update(capabilities={"drop": ["NET_RAW"]}), "baseline",
         "spec.containers[0].securityContext.capabilities.drop"),
    Case("cap-unset", lambda s: sc(s).pop("capabilities"), "baseline",
         "spec.containers[0].securityContext.capabilities.drop"),
    # HostPath volumes
    Case("hostPath", lambda s: s.update(volumes=[{"name": "h", "hostPath": {"path": "/"}}]), "privileged",
         "spec.volumes[0].hostPath"),
    # Host ports
    Case("hostPort", lambda s: s["containers"][0].update(ports=[{"containerPort": 80, "hostPort": 8080}]),
         "privileged", "spec.containers[0].ports[0].hostPort"),
    Case("hostPort-0", lambda s: s["containers"][0].update(ports=[{"containerPort": 80, "hostPort": 0}]),
         "restricted"),
    # AppArmor
    Case("apparmor-unconfined", lambda s: setp(sc(s), "appArmorProfile.type", "Unconfined"), "privileged",
         "spec.containers[0].securityContext.appArmorProfile.type"),
    Case("apparmor-pod-unconfined", lambda s: setp(s, "securityContext.appArmorProfile.type", "Unconfined"),
         "privileged", "spec.securityContext.appArmorProfile.type"),
    Case("apparmor-runtime-default", lambda s: setp(sc(s), "appArmorProfile.type", "RuntimeDefault"), "restricted"),
    # SELinux
    Case("selinux-type-spc", lambda s: setp(sc(s), "seLinuxOptions.type", "spc_t"), "privileged",
         "spec.containers[0].securityContext.seLinuxOptions.type"),
    Case("selinux-user", lambda s: setp(s, "securityContext.seLinuxOptions.user", "system_u"), "privileged",
         "spec.securityContext.seLinuxOptions.user"),
    Case("selinux-role", lambda s: setp(sc(s), "seLinuxOptions.role", "sysadm_r"), "privileged",
         "spec.containers[0].securityContext.seLinuxOptions.role"),
    Case("selinux-container-t", lambda s: setp(sc(s), "seLinuxOptions.type", "container_t"), "restricted"),
    Case("selinux-level", lambda s: setp(sc(s), "seLinuxOptions.level", "s0:c123,c456"), "restricted"),
    # /proc mount
    # The API allows Unmasked only in a user namespace (hostUsers: false); baseline allows it there.
    Case("procMount-unmasked", lambda s: (sc(s).update(procMount="Unmasked"), s.update(hostUsers=False)),
         "baseline", "spec.containers[0].securityContext.procMount"),
    Case("hostUsers-false", lambda s: s.update(hostUsers=False), "restricted"),
    Case("procMount-default", lambda s: sc(s).update(procMount="Default"), "restricted"),
    # Seccomp
    Case("seccomp-unconfined", lambda s: setp(sc(s), "seccompProfile.type", "Unconfined"), "privileged",
         "spec.containers[0].securityContext.seccompProfile.type"),
    Case("seccomp-pod-unconfined", lambda s: setp(s, "securityContext.seccompProfile.type", "Unconfined"),
         "privileged", "spec.securityContext.seccompProfile.type"),
    Case("seccomp-unset", lambda s: (s["securityContext"].pop("seccompProfile"), sc(s).pop("seccompProfile")),
         "baseline", "spec.containers[0].securityContext.seccompProfile.type"),
    Case("seccomp-pod-only", lambda s: (sc(s).pop("seccompProfile"), sc(s, "initContainers").pop("seccompProfile")),
         "restricted"),
    Case("seccomp-localhost", lambda s: sc(s).update(seccompProfile={"type": "Localhost", "localhostProfile": "p.json"}),
         "restricted"),
    # Sysctls
    Case("sysctl-unsafe", lambda s: setp(s, "securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}]),
         "privileged", "spec.securityContext.sysctls[0].name"),
    Case("sysctl-safe", lambda s: setp(s, "securityContext.sysctls",
                                       [{"name": "net.ipv4.ip_local_port_range", "value": "1024 65535"}]),
         "restricted"),
    # Volume types
    Case("volume-nfs", lambda s: s.update(volumes=[{"name": "n", "nfs": {"server": "nfs", "path": "/x"}}]),
         "baseline", "spec.volumes[0].nfs"),
    Case("volume-gitrepo", lambda s: s.update(volumes=[{"name": "g", "gitRepo": {"repository": "x"}}]),
         "baseline", "spec.volumes[0].gitRepo"),
    Case("volume-allowed", lambda s: s.update(volumes=[
        {"name": "e", "emptyDir": {}}, {"name": "c", "configMap": {"name": "x"}}, {"name": "s", "secret": {"secretName": "x"}},
        {"name": "p", "persistentVolumeClaim": {"claimName": "x"}}, {"name": "d", "downwardAPI": {"items": []}},
        {"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "t", "audience": "vault"}}]}},
    ]), "restricted"),
    # Privilege escalation
    Case("escalation-true", lambda s: sc(s).update(allowPrivilegeEscalation=True), "baseline",
         "spec.containers[0].securityContext.allowPrivilegeEscalation"),
    Case("escalation-unset", lambda s: sc(s, "initContainers").pop("allowPrivilegeEscalation"), "baseline",
         "spec.initContainers[0].securityContext.allowPrivilegeEscalation"),
    # Running as non-root
    Case("nonroot-false", lambda s: sc(s).update(runAsNonRoot=False), "baseline",
         "spec.containers[0].securityContext.runAsNonRoot"),
    Case("nonroot-pod-false", lambda s: s["securityContext"].update(runAsNonRoot=False), "baseline",
         "spec.securityContext.runAsNonRoot"),
    Case("nonroot-unset", lambda s: (s["securityContext"].pop("runAsNonRoot"), sc(s).pop("runAsNonRoot")),
         "baseline", "spec.containers[0].securityContext.runAsNonRoot"),
    Case("nonroot-pod-only", lambda s: (sc(s).pop("runAsNonRoot"), sc(s, "initContainers").pop("runAsNonRoot")),
         "restricted"),
    # Running as non-root user
    Case("user-0", lambda s: sc(s).update(runAsUser=0), "baseline", "spec.containers[0].securityContext.runAsUser"),
    Case("user-pod-0", lambda s: s["securityContext"].update(runAsUser=0), "baseline",
         "spec.securityContext.runAsUser"),
    # In a user namespace (hostUsers: false) root is not root on the node: restricted allows it.
    Case("user-0-userns", lambda s: (s.update(hostUsers=False), s["securityContext"].update(runAsUser=0),
                                     s["securityContext"].pop("runAsNonRoot"),
                                     [c["securityContext"].pop("runAsNonRoot") for c in s["containers"] + s["initContainers"]]),
         "restricted"),
    Case("user-1000", lambda s: s["securityContext"].update(runAsUser=1000, runAsGroup=1000, fsGroup=1000),
         "restricted"),
]

# Our own controls (not Pod Security Admission's): agent-controller refuses them below privileged.
OWN_CASES: list[Case] = [
    Case("nodeName", lambda s: s.update(nodeName="node-1"), "privileged", "spec.nodeName"),
    Case("serviceAccountName", lambda s: s.update(serviceAccountName="default"), "privileged",
         "spec.serviceAccountName"),
    Case("serviceAccount", lambda s: s.update(serviceAccount="admin"), "privileged", "spec.serviceAccount"),
    Case("own-serviceAccountName", lambda s: s.update(serviceAccountName="a1-agent"), "restricted"),
    Case("automount-false", lambda s: s.update(automountServiceAccountToken=False), "privileged",
         "spec.automountServiceAccountToken"),
]

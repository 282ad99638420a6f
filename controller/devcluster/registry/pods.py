"""Pods: defaults, validation, ServiceAccount admission and the QoS class on create; spec immutability on
update; the deletion grace period (``terminationGracePeriodSeconds``, finished by the kubelet)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..codec import clone
from ..errors import ApiError, bad_request, ferr
from ..meta import GEN_ALPHABET, name_errors
from .base import Strategy, Write

if TYPE_CHECKING:
    from ..resources import ResourceType
    from ..store import Store


class PodStrategy(Strategy):
    """``pods``."""

    graceful = True

    def prepare_create(
        self, store: Store, rt: ResourceType, ns: str, obj: dict[str, Any], errs: list[Any], w: Write
    ) -> None:
        create(store, ns, obj, errs)

    def prepare_update(
        self, store: Store, rt: ResourceType, new: dict[str, Any], old: dict[str, Any], errs: list[Any], w: Write
    ) -> None:
        if not w.internal:
            validate_update(new, old, errs)

    def deletion_grace(self, obj: dict[str, Any], grace_opt: Any) -> int:
        spec = obj.get("spec") or {}
        grace = int(grace_opt) if grace_opt is not None else int(spec.get("terminationGracePeriodSeconds", 30))
        phase = (obj.get("status") or {}).get("phase")
        if not spec.get("nodeName") or phase in ("Succeeded", "Failed"):
            grace = 0
        if grace < 0:
            grace = 1
        return grace


def create(store: Store, ns: str, pod: dict[str, Any], errs: list[Any]) -> None:
    """Defaults, validation, ServiceAccount admission (the token volume) and the initial status of a new pod."""
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        errs.append(ferr("spec.containers", "FieldValueRequired"))
        return
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("priority", 0)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    sa = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    spec["serviceAccountName"] = sa
    spec["serviceAccount"] = sa
    for key in ("containers", "initContainers"):
        for c in spec.get(key) or ():
            if not isinstance(c, dict):
                continue
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            c.setdefault("terminationMessagePolicy", "File")
            image = c.get("image") or ""
            if "imagePullPolicy" not in c:
                tagged = ":" in image.rsplit("/", 1)[-1] or "@" in image
                c["imagePullPolicy"] = "IfNotPresent" if tagged and not image.endswith(":latest") else "Always"
            c.setdefault("resources", {})
            for port in c.get("ports") or ():
                if isinstance(port, dict):
                    port.setdefault("protocol", "TCP")
    for v in spec.get("volumes") or ():
        if isinstance(v, dict):
            for src in ("configMap", "secret", "projected"):
                if isinstance(v.get(src), dict):
                    v[src].setdefault("defaultMode", 420)
    validate(pod, errs)
    if errs:
        return
    # ServiceAccount admission
    sab = store.buckets[("", "serviceaccounts")]
    sa_entry = sab.objects.get((ns, sa))
    if sa_entry is None:
        raise ApiError(
            403,
            "Forbidden",
            f'pods "{pod["metadata"]["name"]}" is forbidden: error looking up service account {ns}/{sa}: '
            f'serviceaccount "{sa}" not found',
            {"name": pod["metadata"]["name"], "kind": "pods"},
        )
    if spec.get("automountServiceAccountToken", sa_entry.obj.get("automountServiceAccountToken", True)) is not False:
        vols = spec.setdefault("volumes", [])
        mount = "/var/run/secrets/kubernetes.io/serviceaccount"
        vname = "kube-api-access-" + "".join(store.gen_name_rng.choice(GEN_ALPHABET) for _ in range(5))
        vols.append(
            {
                "name": vname,
                "projected": {
                    "defaultMode": 420,
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                        {
                            "downwardAPI": {
                                "items": [
                                    {
                                        "path": "namespace",
                                        "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                                    }
                                ]
                            }
                        },
                    ],
                },
            }
        )
        for c in list(spec.get("containers") or []) + list(spec.get("initContainers") or []):
            mounts = c.setdefault("volumeMounts", [])
            if not any(m.get("mountPath") == mount for m in mounts):
                mounts.append({"name": vname, "readOnly": True, "mountPath": mount})
    pod["status"] = {"phase": "Pending", "qosClass": qos_class(spec)}


def validate(pod: dict[str, Any], errs: list[Any]) -> None:
    """The pod spec checks of a create."""
    spec = pod["spec"]
    containers = spec.get("containers")
    if not containers:
        errs.append(ferr("spec.containers", "FieldValueRequired"))
    vol_names = set()
    for i, v in enumerate(spec.get("volumes") or ()):
        n = v.get("name", "") if isinstance(v, dict) else ""
        p = f"spec.volumes[{i}].name"
        if not n:
            errs.append(ferr(p, "FieldValueRequired"))
        elif n in vol_names:
            errs.append(ferr(p, "FieldValueDuplicate", n))
        else:
            for e in name_errors(n, "label"):
                errs.append(ferr(p, "FieldValueInvalid", n, e))
        vol_names.add(n)
    seen: set[str] = set()
    for key in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(key) or ()):
            p = f"spec.{key}[{i}]"
            if not isinstance(c, dict):
                errs.append(ferr(p, "FieldValueInvalid", str(c), "must be an object"))
                continue
            n = c.get("name") or ""
            if not n:
                errs.append(ferr(p + ".name", "FieldValueRequired"))
            elif n in seen:
                errs.append(ferr(p + ".name", "FieldValueDuplicate", n))
            else:
                for e in name_errors(n, "label"):
                    errs.append(ferr(p + ".name", "FieldValueInvalid", n, e))
            seen.add(n)
            if not c.get("image"):
                errs.append(ferr(p + ".image", "FieldValueRequired"))
            paths: set[str] = set()
            for j, m in enumerate(c.get("volumeMounts") or ()):
                mp = f"{p}.volumeMounts[{j}]"
                if not m.get("name"):
                    errs.append(ferr(mp + ".name", "FieldValueRequired"))
                elif m["name"] not in vol_names:
                    errs.append(ferr(mp + ".name", "FieldValueNotFound", m["name"]))
                if not m.get("mountPath"):
                    errs.append(ferr(mp + ".mountPath", "FieldValueRequired"))
                elif m["mountPath"] in paths:
                    errs.append(ferr(mp + ".mountPath", "FieldValueInvalid", m["mountPath"], "must be unique"))
                paths.add(m.get("mountPath", ""))
            for j, ev in enumerate(c.get("env") or ()):
                if not isinstance(ev, dict) or not ev.get("name"):
                    errs.append(ferr(f"{p}.env[{j}].name", "FieldValueRequired"))
                elif "value" in ev and "valueFrom" in ev and ev["value"]:
                    errs.append(
                        ferr(
                            f"{p}.env[{j}].valueFrom",
                            "FieldValueInvalid",
                            "",
                            "may not be specified when `value` is not empty",
                        )
                    )
    rp = spec.get("restartPolicy")
    if rp not in ("Always", "OnFailure", "Never"):
        errs.append(
            ferr("spec.restartPolicy", "FieldValueNotSupported", rp, 'supported values: "Always", "OnFailure", "Never"')
        )
    ads = spec.get("activeDeadlineSeconds")
    if ads is not None and (not isinstance(ads, int) or ads < 1 or ads > 2147483647):
        errs.append(
            ferr("spec.activeDeadlineSeconds", "FieldValueInvalid", ads, "must be between 1 and 2147483647, inclusive")
        )
    tg = spec.get("terminationGracePeriodSeconds")
    if tg is not None and not isinstance(tg, int):
        raise bad_request("Pod in version \"v1\" cannot be handled as a Pod: terminationGracePeriodSeconds must be an integer")


def validate_update(new: dict[str, Any], old: dict[str, Any], errs: list[Any]) -> None:
    """A pod's spec is immutable but for images, activeDeadlineSeconds and tolerations."""
    ns_, os_ = new.get("spec") or {}, old.get("spec") or {}

    def mask(spec: dict[str, Any]) -> dict[str, Any]:
        s = clone(spec)
        for key in ("containers", "initContainers"):
            for c in s.get(key) or ():
                if isinstance(c, dict):
                    c.pop("image", None)
        s.pop("activeDeadlineSeconds", None)
        s.pop("tolerations", None)
        return s

    if ns_ != os_ and mask(ns_) != mask(os_):
        errs.append(
            ferr(
                "spec",
                "FieldValueForbidden",
                detail="pod updates may not change fields other than `spec.containers[*].image`,"
                "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` "
                "(only additions to existing tolerations),`spec.terminationGracePeriodSeconds` "
                "(allow it to be set to 1 if it was previously negative)",
            )
        )


def qos_class(spec: dict[str, Any]) -> str:
    """status.qosClass of a pod spec."""
    containers = list(spec.get("containers") or []) + list(spec.get("initContainers") or [])
    any_set = False
    guaranteed = True
    for c in containers:
        res = c.get("resources") or {}
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        if req or lim:
            any_set = True
        for r in ("cpu", "memory"):
            if r not in lim or (r in req and req[r] != lim[r]):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"

"""CustomResourceDefinitions and the custom resources they serve: CRD validation, registering and
unregistering the served types, the CRD's cleanup finalizer; custom resources validated by their
structural schema (``schema.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..codec import now_rfc3339
from ..errors import bad_request, ferr
from ..meta import DNS1123_LABEL, LABEL_MSG
from ..resources import STATUS_VERBS, ResourceType
from ..schema import StructuralSchema
from .base import Strategy, Write

if TYPE_CHECKING:
    from ..store import Bucket, Entry, Store

CRD_FINALIZER = "customresourcecleanup.apiextensions.k8s.io"
CRDS = ("apiextensions.k8s.io", "customresourcedefinitions")


class CrdStrategy(Strategy):
    """``customresourcedefinitions``."""

    def prepare_create(
        self, store: Store, rt: ResourceType, ns: str, obj: dict[str, Any], errs: list[Any], w: Write
    ) -> None:
        prepare(obj, None, errs)
        fins = obj["metadata"].setdefault("finalizers", [])
        if CRD_FINALIZER not in fins:
            fins.append(CRD_FINALIZER)

    def prepare_update(
        self, store: Store, rt: ResourceType, new: dict[str, Any], old: dict[str, Any], errs: list[Any], w: Write
    ) -> None:
        if not w.internal:
            prepare(new, old, errs)

    def after_create(self, store: Store, b: Bucket, entry: Entry) -> None:
        register_crd(store, entry.obj)

    def after_update(self, store: Store, b: Bucket, entry: Entry, old: Entry) -> None:
        if "deletionTimestamp" not in entry.obj["metadata"]:
            register_crd(store, entry.obj)

    def after_deletion_started(self, store: Store, b: Bucket, entry: Entry) -> None:
        if CRD_FINALIZER in (entry.obj["metadata"].get("finalizers") or ()):
            store.defer(lambda: cleanup(store, entry.obj))

    def after_remove(self, store: Store, b: Bucket, final: Entry) -> None:
        unregister_crd(store, final.name)


class CustomResourceStrategy(Strategy):
    """Every custom resource (a type registered from a CRD)."""

    validates_status = True

    def prepare_create(
        self, store: Store, rt: ResourceType, ns: str, obj: dict[str, Any], errs: list[Any], w: Write
    ) -> None:
        if rt.status_subresource:
            obj.pop("status", None)
        apply_schema(rt, obj, None, errs, w.warnings, w.strict)

    def prepare_update(
        self, store: Store, rt: ResourceType, new: dict[str, Any], old: dict[str, Any], errs: list[Any], w: Write
    ) -> None:
        apply_schema(rt, new, old, errs, w.warnings, w.strict)

    def after_remove(self, store: Store, b: Bucket, final: Entry) -> None:
        if b.terminating and not b.objects:  # the last one of a deleting CRD
            crd_name = b.rt.crd
            if crd_name:
                store.defer(lambda: store.remove_finalizer(CRDS, "", crd_name, CRD_FINALIZER))


def apply_schema(
    rt: ResourceType,
    obj: dict[str, Any],
    old: dict[str, Any] | None,
    errs: list[Any],
    warnings: list[str] | None,
    strict: bool,
) -> None:
    """Prune unknown fields (a 400 when strict, else warnings), default, validate (CEL rules included)."""
    sch = rt.schema
    if sch is None:
        return
    removed: list[str] = []
    try:
        sch.prune(obj, removed)
    except TypeError:  # an implementation without the ``removed`` parameter
        sch.prune(obj)
    if removed:
        if strict:
            raise bad_request(
                f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: strict decoding error: '
                + ", ".join(f'unknown field "{r}"' for r in removed)
            )
        if warnings is not None:
            warnings.extend(f'unknown field "{r}"' for r in removed)
    sch.default(obj)
    errs.extend(sch.validate(obj, old))


def prepare(crd: dict[str, Any], old: dict[str, Any] | None, errs: list[Any]) -> None:
    """Validate a CRD (names, scope, versions, schemas; immutable group/plural/scope) and set its status."""
    spec = crd.get("spec")
    if not isinstance(spec, dict):
        errs.append(ferr("spec", "FieldValueRequired"))
        return
    group = spec.get("group") or ""
    names = spec.get("names") or {}
    plural = names.get("plural") or ""
    kind = names.get("kind") or ""
    if not group:
        errs.append(ferr("spec.group", "FieldValueRequired"))
    elif len(group.split(".")) < 2:
        errs.append(ferr("spec.group", "FieldValueInvalid", group, "should be a domain with at least one dot"))
    if not plural:
        errs.append(ferr("spec.names.plural", "FieldValueRequired"))
    elif not DNS1123_LABEL.match(plural):
        errs.append(ferr("spec.names.plural", "FieldValueInvalid", plural, LABEL_MSG))
    if not kind:
        errs.append(ferr("spec.names.kind", "FieldValueRequired"))
    names.setdefault("singular", kind.lower())
    names.setdefault("listKind", kind + "List")
    if plural and group and crd["metadata"]["name"] != f"{plural}.{group}":
        errs.append(
            ferr("metadata.name", "FieldValueInvalid", crd["metadata"]["name"], 'must be spec.names.plural+"."+spec.group')
        )
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        errs.append(ferr("spec.scope", "FieldValueNotSupported", spec.get("scope", ""), 'supported values: "Cluster", "Namespaced"'))
    versions = spec.get("versions") or []
    if not versions:
        errs.append(ferr("spec.versions", "FieldValueInvalid", "[]", "must have exactly one version marked as storage version"))
    storage = [v for v in versions if v.get("storage")]
    if versions and len(storage) != 1:
        errs.append(ferr("spec.versions", "FieldValueInvalid", "[...]", "must have exactly one version marked as storage version"))
    for i, v in enumerate(versions):
        sch = ((v.get("schema") or {}).get("openAPIV3Schema"))
        if sch is None:
            errs.append(ferr(f"spec.versions[{i}].schema.openAPIV3Schema", "FieldValueRequired", detail="schemas are required"))
        else:
            try:
                StructuralSchema(sch)
            except Exception as e:  # noqa: BLE001 - any schema compile error is a 422
                errs.append(ferr(f"spec.versions[{i}].schema.openAPIV3Schema", "FieldValueInvalid", "...", str(e)))
    if old is not None:
        ospec = old.get("spec") or {}
        if ospec.get("group") != group or (ospec.get("names") or {}).get("plural") != plural:
            errs.append(ferr("spec.names.plural", "FieldValueInvalid", plural, "field is immutable"))
        if ospec.get("scope") != spec.get("scope"):
            errs.append(ferr("spec.scope", "FieldValueInvalid", spec.get("scope"), "field is immutable"))
    spec.setdefault("conversion", {"strategy": "None"})
    stored = list((old or {}).get("status", {}).get("storedVersions") or [])
    for v in storage:
        if v.get("name") not in stored:
            stored.append(v.get("name"))
    now = now_rfc3339()
    crd["status"] = {
        "conditions": [
            {
                "type": "NamesAccepted",
                "status": "True",
                "reason": "NoConflicts",
                "message": "no conflicts found",
                "lastTransitionTime": now,
            },
            {
                "type": "Established",
                "status": "True",
                "reason": "InitialNamesAccepted",
                "message": "the initial names have been accepted",
                "lastTransitionTime": now,
            },
        ],
        "acceptedNames": dict(names),
        "storedVersions": stored,
    }
    if old is not None and (old.get("status") or {}).get("conditions"):
        crd["status"]["conditions"] = old["status"]["conditions"]
        crd["status"]["acceptedNames"] = dict(names)


def register_crd(store: Store, crd: dict[str, Any]) -> None:
    """(Re)build the served types of a CRD object."""
    spec = crd["spec"]
    names = spec["names"]
    group = spec["group"]
    versions = spec.get("versions") or []
    storage = next((v["name"] for v in versions if v.get("storage")), versions[0]["name"] if versions else "v1")
    cname = crd["metadata"]["name"]
    for k in [k for k, rt in store.types.items() if rt.crd == cname]:
        del store.types[k]
    for v in versions:
        if not v.get("served", True):
            continue
        sub = v.get("subresources") or {}
        subs: dict[str, tuple[str, ...]] = {}
        if "status" in sub:
            subs["status"] = STATUS_VERBS
        if "scale" in sub:
            subs["scale"] = STATUS_VERBS
        sch_src = (v.get("schema") or {}).get("openAPIV3Schema")
        sch = StructuralSchema(sch_src) if sch_src is not None else None
        rt = ResourceType(
            group,
            v["name"],
            names["plural"],
            names.get("singular") or names["kind"].lower(),
            names["kind"],
            spec.get("scope") == "Namespaced",
            tuple(names.get("shortNames") or ()),
            tuple(names.get("categories") or ()),
            subresources=subs,
            storage_version=storage,
            return_deleted=True,
            crd=cname,
            schema=sch,
            printer_columns=v.get("additionalPrinterColumns"),
        )
        store.register(rt)
    b = store.buckets.get((group, names["plural"]))
    if b is not None:
        st = store.types.get((group, storage, names["plural"]))
        if st is not None:
            b.rt = st


def unregister_crd(store: Store, crd_name: str) -> None:
    """Stop serving every type registered by ``crd_name``; close its watches."""
    keys = [k for k, rt in store.types.items() if rt.crd == crd_name]
    bkeys = {store.types[k].bucket_key for k in keys}
    for k in keys:
        del store.types[k]
    for bk in bkeys:
        b = store.buckets.pop(bk, None)
        if b is None:
            continue
        for w in list(b.watchers_all) + [w for s in b.watchers_ns.values() for w in s]:
            w.close()
        for e in b.objects.values():
            store.unindex(b, e)
    store.registry_version += 1


def cleanup(store: Store, crd: dict[str, Any]) -> None:
    """A deleting CRD: delete its custom resources; its finalizer goes once they are gone."""
    spec = crd.get("spec") or {}
    b = store.buckets.get((spec.get("group", ""), (spec.get("names") or {}).get("plural", "")))
    cname = crd["metadata"]["name"]
    if b is None or not b.objects:
        store.remove_finalizer(CRDS, "", cname, CRD_FINALIZER)
        return
    b.terminating = True
    for e in list(b.objects.values()):
        if "deletionTimestamp" not in e.obj["metadata"]:
            store.internal_delete(b.key, e.ns, e.name)
    if not b.objects:
        store.remove_finalizer(CRDS, "", cname, CRD_FINALIZER)


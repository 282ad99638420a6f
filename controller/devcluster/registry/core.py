"""ConfigMaps and Secrets (core/v1): key and size validation, ``immutable``, ``stringData``."""

from __future__ import annotations

import base64
import re
from typing import TYPE_CHECKING, Any

from ..errors import bad_request, ferr
from .base import Strategy, Write

if TYPE_CHECKING:
    from ..resources import ResourceType
    from ..store import Store

_CM_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


class ConfigMapStrategy(Strategy):
    """``configmaps``."""

    def prepare_create(
        self, store: Store, rt: ResourceType, ns: str, obj: dict[str, Any], errs: list[Any], w: Write
    ) -> None:
        validate_configmap(obj, errs)

    def prepare_update(
        self, store: Store, rt: ResourceType, new: dict[str, Any], old: dict[str, Any], errs: list[Any], w: Write
    ) -> None:
        if old.get("immutable") and (new.get("data") != old.get("data") or new.get("binaryData") != old.get("binaryData")):
            errs.append(ferr("data", "FieldValueForbidden", detail="field is immutable when `immutable` is set"))
        validate_configmap(new, errs)


class SecretStrategy(Strategy):
    """``secrets``."""

    def prepare_create(
        self, store: Store, rt: ResourceType, ns: str, obj: dict[str, Any], errs: list[Any], w: Write
    ) -> None:
        prepare_secret(obj, errs)

    def prepare_update(
        self, store: Store, rt: ResourceType, new: dict[str, Any], old: dict[str, Any], errs: list[Any], w: Write
    ) -> None:
        prepare_secret(new, errs)


def validate_configmap(cm: dict[str, Any], errs: list[Any]) -> None:
    """``data``/``binaryData``: string values, valid keys, at most 1 MiB."""
    total = 0
    for fld in ("data", "binaryData"):
        d = cm.get(fld)
        if d is None:
            continue
        if not isinstance(d, dict) or not all(isinstance(v, str) for v in d.values()):
            raise bad_request(
                f'ConfigMap in version "v1" cannot be handled as a ConfigMap: json: cannot unmarshal '
                f"into Go struct field ConfigMap.{fld} of type string"
            )
        for k, v in d.items():
            if len(k) > 253 or not _CM_KEY.match(k):
                errs.append(
                    ferr(
                        f"{fld}[{k}]",
                        "FieldValueInvalid",
                        k,
                        "a valid config key must consist of alphanumeric characters, '-', '_' or '.' "
                        "(e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is "
                        "'[-._a-zA-Z0-9]+')",
                    )
                )
            total += len(k) + (len(v.encode()) if fld == "data" else len(v) * 3 // 4)
    if total > 1048576:
        errs.append(ferr("[]", "FieldValueTooLong", detail="must have at most 1048576 bytes"))


def prepare_secret(s: dict[str, Any], errs: list[Any]) -> None:
    """``stringData`` folded into ``data``, the default type, and ``data`` checked to be base64."""
    sd = s.pop("stringData", None)
    if isinstance(sd, dict):
        data = s.setdefault("data", {})
        for k, v in sd.items():
            data[k] = base64.b64encode(str(v).encode()).decode()
    s.setdefault("type", "Opaque")
    for k, v in (s.get("data") or {}).items():
        try:
            base64.b64decode(v, validate=True)
        except Exception:  # noqa: BLE001
            raise bad_request(f"Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data at data[{k}]") from None


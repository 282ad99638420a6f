"""Names and labels of child objects, and validation of every name used in a path or a label.

Pure. Names longer than Kubernetes limits are shortened deterministically: prefix + '-' + hash.
"""

from __future__ import annotations

import hashlib
import re

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "agent-controller"
AGENT_LABEL = "agentcontroller.dev/agent"
AGENT_UID_LABEL = "agentcontroller.dev/agent-uid"

POD_CONTAINER = "agent"
SHIP_TOKEN_VOLUME = "agent-controller-ship-token"   # the token agentctl run ships output with (ship.py)
PROMPT_KEY = "prompt.txt"
PROMPT_MOUNT_DIR = "/var/run/agent"
PROMPT_FILE = f"{PROMPT_MOUNT_DIR}/{PROMPT_KEY}"

NAME_LIMIT = 63  # we keep every child name a DNS label (pod hostnames, service accounts in tokens)

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_UID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,127}$")


class InvalidName(ValueError):
    pass


def is_dns_label(value: str) -> bool:
    return len(value) <= 63 and bool(_DNS_LABEL.match(value))


def is_dns_subdomain(value: str) -> bool:
    return len(value) <= 253 and bool(_DNS_SUBDOMAIN.match(value))


def check_namespace(value: str) -> str:
    if not is_dns_label(value):
        raise InvalidName(f"invalid namespace {value!r}")
    return value


def check_name(value: str) -> str:
    if not is_dns_subdomain(value) or value in (".", ".."):
        raise InvalidName(f"invalid object name {value!r}")
    return value


def check_uid(value: str) -> str:
    if not _UID.match(value or ""):
        raise InvalidName(f"invalid uid {value!r}")
    return value


def child_name(agent_name: str, suffix: str = "") -> str:
    """`<agent><suffix>`, shortened to 63 chars as prefix + '-' + 10-char hash when longer."""
    full = f"{agent_name}{suffix}"
    if len(full) <= NAME_LIMIT:
        return full
    digest = hashlib.sha256(agent_name.encode()).hexdigest()[:10]
    keep = NAME_LIMIT - len(suffix) - len(digest) - 1
    prefix = agent_name[:keep].rstrip("-.")
    return f"{prefix}-{digest}{suffix}"


def pod_name(agent_name: str) -> str:
    return child_name(agent_name)


def prompt_configmap_name(agent_name: str) -> str:
    return child_name(agent_name, "-prompt")


def credentials_name(agent_name: str) -> str:
    """ServiceAccount, Role and RoleBinding share this name."""
    return child_name(agent_name, "-agent")


def label_value(value: str) -> str:
    """A valid label value: truncated to 63, ends alphanumeric."""
    return value[:63].rstrip("-._")


def child_labels(agent_name: str, agent_uid: str) -> dict[str, str]:
    return {
        MANAGED_BY_LABEL: MANAGED_BY_VALUE,
        AGENT_LABEL: label_value(agent_name),
        AGENT_UID_LABEL: label_value(agent_uid),
    }


def uid_selector(agent_uid: str) -> str:
    return f"{AGENT_UID_LABEL}={label_value(agent_uid)}"


MANAGED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"

"""kopf's settings for this controller, and the storage classes they use.

- No diff-base annotation at all (`NoDiffBase`): the controller has no change-detecting handlers
  (create/update/resume); `sync` decides from the object as it is, not from a diff. kopf's default
  would copy the whole spec — a prompt of up to 512 KiB included — into the
  `last-handled-configuration` annotation, and annotations are limited to 256 KiB per object: the
  patch would fail with 422, forever, and the finalizer would never be removed.
- Handler progress (only the finalizer's retries) in annotations with our prefix, never in `status`,
  which the structural schema prunes.
- finalizer `agentcontroller.dev/cleanup`.
- `posting.loggers`, level WARNING: a handler failure kopf retries becomes a Warning Event on the
  Agent (`kubectl describe agent`); routine messages stay in the log.
- `scanning.disabled`: no dynamic discovery of CRDs and namespaces (it needs cluster-wide list/watch
  of both, which least privilege does not grant); the Agent CRD must exist when the controller starts.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from . import FINALIZER, GROUP


class NoDiffBase(kopf.DiffBaseStorage):
    """Stores no diff-base: every essence is the same empty one, so kopf never patches one in."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        return {}

    def fetch(self, *, body: kopf.Body) -> Any:
        return {}

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        return None


def configure(settings: kopf.OperatorSettings) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.loggers = True        # kopf's default is False: handler failures would be log-only
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.queueing.worker_limit = None
    settings.scanning.disabled = True
    settings.networking.request_timeout = 60

"""controller/kopfconfig.py: no diff-base annotation, progress in our annotations, the settings."""

from __future__ import annotations

import logging

import kopf

from controller import FINALIZER, GROUP
from controller.kopfconfig import NoDiffBase, configure

PROMPT = "p" * (512 * 1024)      # the CRD's limit: twice what an annotation may hold


def body() -> kopf.Body:
    return kopf.Body({"apiVersion": f"{GROUP}/v1alpha1", "kind": "Agent",
                      "metadata": {"name": "a1", "namespace": "ns", "uid": "u1", "annotations": {}},
                      "spec": {"image": "img", "prompt": PROMPT}})


def test_no_diff_base_is_stored_or_built():
    storage = NoDiffBase()
    patch = kopf.Patch()
    assert storage.build(body=body()) == {}
    assert storage.fetch(body=body()) == {}
    storage.store(body=body(), patch=patch, essence={"spec": {"prompt": PROMPT}})
    assert not patch           # nothing is written back: no 512 KiB prompt copied into an annotation


def test_every_essence_is_the_same_so_no_diff_is_ever_seen():
    storage = NoDiffBase()
    changed = body()
    assert storage.build(body=body()) == storage.build(body=changed) == storage.fetch(body=changed)


def test_configure():
    settings = kopf.OperatorSettings()
    configure(settings)
    assert settings.persistence.finalizer == FINALIZER == "agentcontroller.dev/cleanup"
    assert isinstance(settings.persistence.diffbase_storage, NoDiffBase)
    progress = settings.persistence.progress_storage
    assert isinstance(progress, kopf.AnnotationsProgressStorage) and progress.prefix == GROUP
    assert settings.posting.loggers is True and settings.posting.level == logging.WARNING
    assert settings.scanning.disabled is True
    assert settings.queueing.worker_limit is None
    assert (settings.watching.server_timeout, settings.watching.client_timeout) == (300, 330)
    assert settings.networking.request_timeout == 60

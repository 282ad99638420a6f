"""The devcluster's kubelet: the node simulator's :class:`~controller.nodesim.emulator.EmulatorKubelet`
whose pods get their service-account tokens as a real kubelet gets them — a TokenRequest bound to
the pod, for the projected volume's audience and expiration (controller/devcluster/tokens.py; the
node simulator on a real control plane sends the same TokenRequest, controller/nodesim/kubeapi.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from controller.nodesim.core import SimPod
from controller.nodesim.emulator import EmulatorKubelet

__all__ = ["DevClusterKubelet"]

RequestToken = Callable[[str, str, dict[str, Any]], dict[str, Any]]
"""``request_token(namespace, service_account, TokenRequest)``: the TokenRequest answered."""


class DevClusterKubelet(EmulatorKubelet):
    """:class:`EmulatorKubelet` with pod-bound tokens (``request_token`` runs on the server loop)."""

    def __init__(self, store: Any, *, request_token: RequestToken, **options: Any) -> None:
        super().__init__(store, **options)
        self._request_token = request_token

    async def pod_token(self, p: SimPod, audiences: list[str] | None, expiration: int) -> str:
        ref = {"apiVersion": "v1", "kind": "Pod", "name": p.name, "uid": p.uid}
        spec: dict[str, Any] = {"expirationSeconds": expiration, "boundObjectRef": ref}
        if audiences:
            spec["audiences"] = list(audiences)
        answer = self._request_token(p.ns, p.sa, {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                                  "spec": spec})
        return str(answer["status"]["token"])

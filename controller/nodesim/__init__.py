"""The node simulator: one kubelet implementation behind two backends (docs/nodesim.md).

- :mod:`controller.nodesim.core` — pods and containers as a kubelet runs them (scripts, local
  processes, log files with rotation, statuses, graceful deletion), independent of the backend;
- :mod:`controller.nodesim.emulator` — ``DevCluster.kubelet``, on the emulator's loop, no HTTP;
- :mod:`controller.nodesim.kubeapi` — simulated Nodes against a real kube-apiserver (registration,
  heartbeat Leases, pod watch, ``pods/status``, TokenRequest, the kubelet's final delete) with the
  kubelet API served over HTTPS (:mod:`controller.nodesim.kubeletserver`), so ``kubectl logs`` goes
  through the real API server;
- :mod:`controller.nodesim.behaviour` — the ``sim.agentcontroller.dev/`` annotations and scripts.

``NodeSimulator`` (:mod:`controller.nodesim.sim`) runs the real-API nodes in a background thread
with a thread-safe API; ``python -m controller.nodesim`` runs them as a process.
"""

from collections.abc import Callable
from typing import Any

from .behaviour import PREFIX, generate_output, parse_quantity, write_chunks
from .core import INVALID_IMAGE_PREFIX, LOCAL_IMAGE_PREFIX

def start_nodes(cp: Any, count: int, **options: Any) -> Callable[[], None]:
    """The control plane's seam (``python -m controller.controlplane --nodes N``): start ``count``
    simulated nodes on ``cp`` and return the callable that stops them (see sim.start_nodes)."""
    from .sim import start_nodes as start

    return start(cp, count, **options).stop


__all__ = [
    "INVALID_IMAGE_PREFIX",
    "LOCAL_IMAGE_PREFIX",
    "PREFIX",
    "generate_output",
    "parse_quantity",
    "start_nodes",
    "write_chunks",
]

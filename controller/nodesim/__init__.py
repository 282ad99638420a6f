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

from .behaviour import PREFIX, generate_output, parse_quantity, write_chunks
from .core import INVALID_IMAGE_PREFIX, LOCAL_IMAGE_PREFIX

__all__ = [
    "INVALID_IMAGE_PREFIX",
    "LOCAL_IMAGE_PREFIX",
    "PREFIX",
    "generate_output",
    "parse_quantity",
    "write_chunks",
]

"""A real Kubernetes control plane, built from Go modules and started from Python.

- :mod:`.binaries` — etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kubectl of
  one pinned release, built by ``scripts/install-control-plane.sh`` (sources in ``gobuild/``).
- :mod:`.cluster` — :class:`ControlPlane`: the four processes on loopback with generated
  certificates (:mod:`.pki`), an admin kubeconfig and token, ServiceAccount tokens via TokenRequest.
- ``python -m controller.controlplane --kubeconfig-out FILE`` — the same from the command line.

See docs/controlplane.md.
"""

from .binaries import BINARIES, BinariesUnavailable, BuildFailed, ensure_binaries
from .cluster import ApiError, ControlPlane, ControlPlaneError

__all__ = ["BINARIES", "ApiError", "BinariesUnavailable", "BuildFailed", "ControlPlane", "ControlPlaneError",
           "ensure_binaries"]

"""In-process Kubernetes API emulator + simulated kubelet (demo, tests, benchmarks).

See docs/ARCHITECTURE.md ("devcluster: the contract")::

    from controller.devcluster import DevCluster

    cluster = DevCluster().start()
    cluster.apply_file("manifests/crd.yaml")
    kubeconfig = cluster.kubeconfig_path("/tmp/kc")
    ...
    cluster.stop()
"""

from .errors import ApiError
from .faults import Fault, Faults
from .server import DevCluster

__all__ = ["ApiError", "DevCluster", "Fault", "Faults"]

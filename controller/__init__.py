"""agent-controller: Kubernetes controller that guarantees AI-agent workloads never leak."""

__version__ = "0.1.0"

GROUP = "agentcontroller.dev"
VERSION = "v1alpha1"
PLURAL = "agents"
KIND = "Agent"
FINALIZER = "agentcontroller.dev/cleanup"
DEFAULT_ARCHIVE_DIR = "/var/lib/agent-controller/archive"

"""``agentctl``: the agent-side tool (runs inside agent pods).

- :mod:`controller.agentctl.cli` — ``agentctl report|kill|run``;
- :mod:`controller.agentctl.status` — reporting the agent's phase with its own credentials, kill;
- :mod:`controller.agentctl.supervise` — the PID-1 supervisor behind ``agentctl run``;
- :mod:`controller.agentctl.kubeapi` — the few Kubernetes API calls above, over ``urllib``;
- :mod:`controller.agentctl.args` — one-line usage errors for argparse.

This package uses the Python standard library only and imports nothing from the rest of
``controller``: it is installed on its own into agent images by the ``agent-controller-agentctl``
distribution (``agentctl/pyproject.toml``, the same source files), where ``controller`` is just a
namespace. The constants below are therefore this package's own copies of the controller's;
``tests/agentctl/test_agentctl_packaging.py`` keeps them equal.
"""

__version__ = "0.1.0"
"""The version of agent-controller this agentctl belongs to (pyproject.toml ``[project].version``)."""

GROUP = "agentcontroller.dev"
VERSION = "v1alpha1"
PLURAL = "agents"

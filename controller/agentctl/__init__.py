"""``agentctl``: the agent-side tool (runs inside agent pods).

- :mod:`controller.agentctl.cli` — ``agentctl report|kill|run``;
- :mod:`controller.agentctl.status` — reporting the agent's phase with its own credentials, kill;
- :mod:`controller.agentctl.supervise` — the PID-1 supervisor behind ``agentctl run``.
"""

"""agent-controller benchmark: `python -m bench` (see bench/README.md)."""

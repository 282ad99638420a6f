"""Argument parsing shared by `agent-controller` and `agentctl`: one-line usage errors, bounded numbers."""

from __future__ import annotations

import argparse

# One implementation, in agentctl's package (which is installed alone into agent images, so it
# cannot import from here): the controller's commands use the same.
from .agentctl.args import OneLineParser, int_in

__all__ = ["OneLineParser", "int_in", "port", "positive_float"]


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


port = int_in(0, 65535, "port")

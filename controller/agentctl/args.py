"""Argument parsing of ``agentctl``: one-line usage errors, bounded numbers.

:mod:`controller.cliargs` (``agent-controller``'s) takes these from here: ``controller.agentctl``
needs nothing outside itself (it is installed alone into agent images).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    """Usage errors are one line (exit 2), never a usage dump or a traceback."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def int_in(low: int, high: int, what: str = "number") -> Callable[[str], int]:
    """An argparse type: an integer within [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {what}: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} out of range: {value} (must be {low}..{high})")
        return value

    parse.__name__ = what
    return parse

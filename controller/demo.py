"""`agent-controller demo` (placeholder until the demo lands)."""

from __future__ import annotations

import argparse
from typing import Any


def add_demo_parser(sub: Any) -> None:
    sub.add_parser("demo", help="run the controller against an embedded API emulator with sample agents")


def main(args: argparse.Namespace) -> int:
    print("agent-controller demo: not implemented yet")
    return 1

#!/usr/bin/env python3
"""Print the Markdown table of the chart's values (for docs/install.md) from
helm/agent-controller/values.yaml: every key preceded by a `# -- description` comment is one row,
with its default as JSON.

    python scripts/values-table.py            # print the table
    python scripts/values-table.py --write    # replace the table in docs/install.md

tests/shipping/test_docs.py checks that docs/install.md holds exactly this table.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys
from typing import Any

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
VALUES = ROOT / "helm" / "agent-controller" / "values.yaml"
DOC = ROOT / "docs" / "install.md"
START = "<!-- values-table:start -->"
END = "<!-- values-table:end -->"
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_]+):")


def documented_keys(text: str) -> list[tuple[str, str]]:
    """(dotted key, description) of each key that has a `# --` comment, in file order."""
    rows: list[tuple[str, str]] = []
    path: list[tuple[int, str]] = []
    pending: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if pending is not None and stripped.startswith("#"):
            pending.append(stripped[1:].strip())
            continue
        match = KEY.match(line)
        if not match:
            if stripped and not stripped.startswith("#") and not stripped.startswith("-"):
                pending = None
            continue
        indent = len(match.group("indent"))
        while path and path[-1][0] >= indent:
            path.pop()
        path.append((indent, match.group("key")))
        if pending is not None:
            rows.append((".".join(k for _, k in path), " ".join(pending)))
            pending = None
    return rows


def lookup(values: dict[str, Any], dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        node = node[part]
    return node


def table() -> str:
    text = VALUES.read_text()
    values = yaml.safe_load(text)
    lines = ["| key | default | description |", "|---|---|---|"]
    for key, description in documented_keys(text):
        default = json.dumps(lookup(values, key), separators=(", ", ": "))
        lines.append(f"| `{key}` | `{default}` | {description} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--write", action="store_true", help=f"replace the table in {DOC.relative_to(ROOT)}")
    args = parser.parse_args()
    if not args.write:
        sys.stdout.write(table())
        return 0
    doc = DOC.read_text()
    head, rest = doc.split(START, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{START}\n{table()}{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

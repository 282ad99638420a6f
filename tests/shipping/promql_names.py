"""Run with the tools' Python (it has promql-parser): reads a JSON list of PromQL expressions on
stdin, prints a JSON list of {"expr", "error", "metrics"}: the parse error (or null) and the
metric names of every vector selector in the expression."""

from __future__ import annotations

import json
import sys

import promql_parser


def main() -> None:
    results = []
    for expr in json.load(sys.stdin):
        names: list[str] = []

        def visit(node: object, names: list[str] = names) -> bool:
            if isinstance(node, promql_parser.VectorSelector):
                name = node.name
                if not name:  # {__name__="..."}
                    for m in node.matchers.matchers:
                        if m.name == "__name__":
                            name = m.value
                names.append(name or "")
            return True

        try:
            promql_parser.walk(promql_parser.parse(expr), visit)
            results.append({"expr": expr, "error": None, "metrics": sorted(set(names))})
        except Exception as exc:  # noqa: BLE001 - report any parse failure
            results.append({"expr": expr, "error": f"{type(exc).__name__}: {exc}", "metrics": []})
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()

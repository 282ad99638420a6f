"""docs/install.md: its values table matches values.yaml, and it covers install, upgrade, uninstall
and the plain-kubectl install."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import yaml

from .shiputil import CHART, ROOT

DOC = ROOT / "docs" / "install.md"


def table_rows() -> dict[str, Any]:
    text = DOC.read_text()
    block = text.split("<!-- values-table:start -->", 1)[1].split("<!-- values-table:end -->", 1)[0]
    rows = {}
    for line in block.strip().splitlines()[2:]:
        match = re.fullmatch(r"\| `([^`]+)` \| `(.*)` \| (.+) \|", line)
        assert match, f"malformed row: {line}"
        key, default, description = match.groups()
        assert key not in rows, f"duplicate row {key}"
        assert description.strip(), key
        rows[key] = json.loads(default)
    return rows


def leaves(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from leaves(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip(".")


def lookup(values: dict[str, Any], dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        assert isinstance(node, dict) and part in node, f"{dotted} is not in values.yaml"
        node = node[part]
    return node


def test_values_table_matches_values_yaml() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    rows = table_rows()
    for key, default in rows.items():
        assert lookup(values, key) == default, (
            f"{key}: the table says {default!r}, values.yaml says otherwise"
        )
    for leaf in leaves(values):
        covered = any(leaf == key or leaf.startswith(key + ".") for key in rows)
        assert covered, f"values.yaml has {leaf}, docs/install.md's table does not"


def test_values_table_is_the_generated_one() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "values-table.py")],
        capture_output=True,
        text=True,
        check=True,
    )
    text = DOC.read_text()
    block = text.split("<!-- values-table:start -->\n", 1)[1].split("<!-- values-table:end -->", 1)[0]
    assert block == proc.stdout, "run python scripts/values-table.py --write"


def test_install_doc_covers_the_lifecycle() -> None:
    text = DOC.read_text()
    for needle in [
        "helm install agent-controller helm/agent-controller",
        "helm upgrade",
        "helm uninstall",
        "helm.sh/resource-policy: keep",
        "crds/",
        "kubectl apply -f manifests/crd.yaml",
        "manifests/install.yaml",
        "agentcontroller.dev/cleanup",
    ]:
        assert needle in text, needle


def test_install_doc_stands_on_its_own() -> None:
    """Users have the docs, not the project's internal contract: no "SPEC §5" or any SPEC section —
    in the docs nor in what they read through helm and kubectl (`helm show values`, the chart, the
    manifests, the dashboard, the alert rules, the examples)."""
    shipped = [DOC, ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for tree in ("helm", "manifests", "deploy", "examples"):
        shipped += [p for p in sorted((ROOT / tree).rglob("*")) if p.is_file() and p.suffix in (
            ".yaml", ".yml", ".json", ".tpl", ".txt", ".md", "") and "wheels" not in p.parts]
    for doc in shipped:
        assert not re.search(r"\bSPEC\b", doc.read_text(errors="replace")), doc


def test_security_sections() -> None:
    from controller import podsecurity

    install = DOC.read_text()
    readme = (ROOT / "README.md").read_text()
    for text in (install, readme):
        section = text.split("## Security", 1)[1].split("\n## ", 1)[0]
        for needle in ("Kubernetes 1.30", "restricted", "baseline", "privileged", "InvalidSpec",
                       "ValidatingAdmissionPolicy", "cleanup", "Succeeded", "agent's own"):
            assert needle in section, needle
    section = install.split("## Security", 1)[1].split("\n## ", 1)[0]
    for needle in ("### Threat model", "### What creating an Agent allows", "### Who may write what in the status",
                   "administrator", "Agent creators", "--pod-security", "podSecurity", "statusPolicy"):
        assert needle in section, needle
    table = section.split("<!-- pod-security-table:start -->", 1)[1].split("<!-- pod-security-table:end -->", 1)[0]
    rows = [line for line in table.strip().splitlines()[2:]]
    assert len(rows) == len(podsecurity.CONTROLS), "one row per control of controller/podsecurity.py"
    for row, control in zip(rows, podsecurity.CONTROLS):
        cells = [c.strip() for c in row.strip("|").split("|")]
        at = "restricted" if control.level == podsecurity.RESTRICTED else "baseline, restricted"
        assert cells[:3] == [control.title, control.source, at], row


def test_uninstall_way_out_is_documented() -> None:
    text = DOC.read_text()
    assert "<!-- release-finalizers:start -->" in text and "agent-controller uninstall --release-finalizers" in text
    assert "Retain" in text and "manifests/archive-pvc.yaml" in text and "manifests/namespace.yaml" in text
    assert "kubectl apply --server-side --force-conflicts -f manifests/crd.yaml" in text

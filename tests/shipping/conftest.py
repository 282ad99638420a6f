"""Fixtures of the shipping tests (helpers: shiputil.py)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from .shiputil import ROOT


@pytest.fixture(scope="session")
def crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load((ROOT / "manifests" / "crd.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
    return version["schema"]["openAPIV3Schema"]

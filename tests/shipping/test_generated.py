"""Files generated or copied from one source are up to date, and the image build is sound."""

from __future__ import annotations

import re
import tomllib

import pytest

from .shiputil import CHART, ROOT, run, tool


def test_chart_crd_is_a_byte_identical_copy() -> None:
    assert (CHART / "crds" / "agents.agentcontroller.dev.yaml").read_bytes() == (
        ROOT / "manifests" / "crd.yaml"
    ).read_bytes(), "run scripts/generate-manifests.sh"


def test_generated_files_are_not_stale() -> None:
    """manifests/install.yaml, deploy/prometheus/agent-controller-rules.yaml and the chart's copies."""
    tool("helm")
    proc = run(
        ["bash", str(ROOT / "scripts" / "generate-manifests.sh"), "--check"],
        check=False,
        env_extra={"HELM": tool("helm")},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "examples/agent-image/Dockerfile"])
def test_hadolint_dockerfile(dockerfile: str) -> None:
    proc = run([tool("hadolint"), str(ROOT / dockerfile)], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_contract() -> None:
    text = (ROOT / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert len(froms) >= 2, "multi-stage build"
    for image in froms:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", image), image
    assert re.search(r"^USER\s+(?!0\b|root\b)\S+", text, re.MULTILINE), "runs as a non-root user"
    last_stage = text.split("\nFROM ")[-1]
    assert "COPY --from=build" in last_stage, "the final stage only copies the built virtualenv"
    assert "pip install" not in last_stage and "apt-get install" not in last_stage, (
        "no build tools in the image"
    )
    assert 'ENTRYPOINT ["agent-controller", "run"]' in text
    assert "--requirement requirements.lock" in text or "-r requirements.lock" in text


def test_requirements_lock_pins_the_runtime_dependencies() -> None:
    requirements = pytest.importorskip("packaging.requirements")
    utils = pytest.importorskip("packaging.utils")
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.!+\-]+)", line)
        assert match, f"not an exact pin: {line!r}"
        pins[utils.canonicalize_name(match.group(1))] = match.group(2)
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        req = requirements.Requirement(dep)
        name = utils.canonicalize_name(req.name)
        assert name in pins, f"{req.name} is a runtime dependency but not in requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{req.name}=={pins[name]} violates {dep}"
        )

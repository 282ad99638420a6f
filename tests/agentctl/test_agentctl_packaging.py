"""Issue 16, "The agent image and agentctl": agentctl installs alone, and the images are versioned.

- ``agentctl/pyproject.toml`` (distribution ``agent-controller-agentctl``) packages
  ``controller/agentctl`` itself, with no dependencies: a wheel built from it installs into a fresh
  virtualenv without an index, ``agentctl`` runs there, and none of the controller's dependencies
  is importable or imported;
- versions and constants that ``controller.agentctl`` keeps as its own copies agree with the
  controller's;
- the controller's ``Dockerfile`` takes its version from a build argument that must be the package
  version (checked during the build), and the docs say how to build, push and use the images.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agentctl_helpers import DEADLINE, REPO, write_kubeconfig
from fakeapi import FakeAPI

import controller
import controller.agentctl
from controller import cliargs
from controller.agentctl import args

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
AGENTCTL_PYPROJECT = tomllib.loads((REPO / "agentctl" / "pyproject.toml").read_text())
PACKAGE_VERSION = PYPROJECT["project"]["version"]
FORBIDDEN = ("kopf", "kubernetes", "aiohttp", "psutil", "prometheus_client")
BUILD_SECONDS = 300.0


# ------------------------------------------------------------------ one version, one set of constants


def test_versions_agree() -> None:
    assert controller.agentctl.__version__ == PACKAGE_VERSION, "controller/agentctl/__init__.py __version__"
    assert controller.__version__ == PACKAGE_VERSION
    assert AGENTCTL_PYPROJECT["project"]["version"] == PACKAGE_VERSION, "agentctl/pyproject.toml version"


def test_constants_are_the_controllers() -> None:
    for name in ("GROUP", "VERSION", "PLURAL"):
        assert getattr(controller.agentctl, name) == getattr(controller, name), name


def test_argument_helpers_are_the_same_as_the_controllers() -> None:
    """One implementation: the controller's commands use agentctl's (which needs nothing outside its
    package)."""
    assert cliargs.OneLineParser is args.OneLineParser and cliargs.int_in is args.int_in


def test_the_distribution_packages_controller_agentctl_itself() -> None:
    project = AGENTCTL_PYPROJECT["project"]
    assert project["dependencies"] == []
    assert project["requires-python"] == PYPROJECT["project"]["requires-python"]
    assert project["scripts"] == {"agentctl": PYPROJECT["project"]["scripts"]["agentctl"]}
    setuptools = AGENTCTL_PYPROJECT["tool"]["setuptools"]
    assert setuptools["packages"] == ["controller.agentctl"]
    (source,) = setuptools["package-dir"].values()
    assert (REPO / "agentctl" / source).resolve() == (REPO / "controller" / "agentctl").resolve()


# ------------------------------------------------------------------ installed alone


def _sources() -> list[str]:
    return sorted(p.name for p in (REPO / "controller" / "agentctl").glob("*.py"))


def _can_build_offline() -> bool:
    """setuptools with its own bdist_wheel (70.1+), or the wheel package: no build isolation needed."""
    try:
        import setuptools
    except ImportError:
        return False
    version = tuple(int(x) for x in re.findall(r"\d+", setuptools.__version__)[:2])
    return version >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The agentctl wheel, built from a copy of the layout an image build sees (agentctl/ and
    controller/agentctl/ side by side), installed into a fresh virtualenv without an index."""
    tmp = tmp_path_factory.mktemp("agentctl-dist")
    src = tmp / "src"
    shutil.copytree(REPO / "agentctl", src / "agentctl", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    (src / "controller" / "agentctl").mkdir(parents=True)
    for name in _sources():
        shutil.copy2(REPO / "controller" / "agentctl" / name, src / "controller" / "agentctl" / name)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "PIP_FIND_LINKS", "PIP_NO_INDEX", "VIRTUAL_ENV"))}
    wheels = tmp / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(wheels), str(src / "agentctl")]
    if _can_build_offline():
        build.insert(4, "--no-build-isolation")
    r = subprocess.run(build, env=env, capture_output=True, text=True, timeout=BUILD_SECONDS, check=False)
    assert r.returncode == 0, f"building the agentctl wheel failed:\n{r.stdout}\n{r.stderr}"
    (wheel,) = wheels.glob("*.whl")

    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], env=env, check=True, timeout=BUILD_SECONDS,
                   capture_output=True)
    bin_dir = venv / "bin"
    # --no-index and no find-links: a dependency, if the wheel had one, could not be installed.
    r = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--no-index", str(wheel)],
                       env=env, capture_output=True, text=True, timeout=BUILD_SECONDS, check=False)
    assert r.returncode == 0, f"installing the agentctl wheel alone failed:\n{r.stdout}\n{r.stderr}"
    yield {"wheel": wheel, "venv": venv, "bin": bin_dir, "env": env, "tmp": tmp}


def test_the_wheel_holds_only_agentctl_and_requires_nothing(installed: dict[str, Any]) -> None:
    wheel: Path = installed["wheel"]
    assert wheel.name == f"agent_controller_agentctl-{PACKAGE_VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = z.read(metadata).decode()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = z.read(entry_points).decode()
    code = sorted(n for n in names if ".dist-info/" not in n)
    assert code == [f"controller/agentctl/{n}" for n in _sources()], "exactly the package's own source files"
    assert "Requires-Dist" not in meta, meta
    assert "agentctl = controller.agentctl.cli:main" in scripts


def test_agentctl_runs_from_the_fresh_virtualenv(installed: dict[str, Any]) -> None:
    agentctl = str(installed["bin"] / "agentctl")
    r = subprocess.run([agentctl, "--help"], env=installed["env"], capture_output=True, text=True,
                       timeout=DEADLINE, check=False)
    assert r.returncode == 0 and r.stdout.startswith("usage: agentctl"), r
    r = subprocess.run([agentctl, "--version"], env=installed["env"], capture_output=True, text=True,
                       timeout=DEADLINE, check=False)
    assert r.stdout == f"agentctl {PACKAGE_VERSION}\n", r
    run = subprocess.run([agentctl, "run", "--", "sh", "-c", "echo hi; exit 3"], env=installed["env"],
                         capture_output=True, timeout=DEADLINE, check=False)
    assert (run.returncode, run.stdout, run.stderr) == (3, b"hi\n", b"")


def test_nothing_of_the_controller_is_importable_there(installed: dict[str, Any]) -> None:
    code = (
        "import importlib.util, json, sys\n"
        "import controller.agentctl.cli, controller.agentctl.status, controller.agentctl.supervise\n"
        "import controller.agentctl.kubeapi\n"
        f"forbidden = {FORBIDDEN!r}\n"
        "print(json.dumps({'file': controller.agentctl.__file__,\n"
        "    'importable': [m for m in forbidden + ('controller.cliargs', 'controller.cli')\n"
        "                   if importlib.util.find_spec(m) is not None],\n"
        "    'imported': [m for m in forbidden if m in sys.modules],\n"
        "    'prefix': sys.prefix}))\n"
    )
    r = subprocess.run([str(installed["bin"] / "python"), "-I", "-c", code], env=installed["env"],
                       capture_output=True, text=True, timeout=DEADLINE, check=False)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    assert Path(seen["file"]).is_relative_to(installed["venv"]), seen
    assert seen["importable"] == [] and seen["imported"] == [], seen


def test_kill_from_the_fresh_virtualenv(installed: dict[str, Any], tmp_path: Path) -> None:
    """Against the stand-in API, with a JSON kubeconfig; a YAML one needs PyYAML, which is not there."""
    api = FakeAPI()
    try:
        api.add_agent("team-a", "a1", {"phase": "Working"})
        kc = tmp_path / "kc.json"
        kc.write_text(json.dumps({
            "current-context": "x", "clusters": [{"name": "c", "cluster": {"server": api.url}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "team-a"}}]}))
        env = {**installed["env"], "KUBECONFIG": str(kc)}
        agentctl = str(installed["bin"] / "agentctl")
        r = subprocess.run([agentctl, "kill", "a1"], env=env, capture_output=True, text=True, timeout=DEADLINE,
                           check=False)
        assert r.returncode == 0, r.stderr
        assert r.stdout == "agent.agentcontroller.dev/a1 terminate requested (namespace team-a)\n"
        assert api.objects[("team-a", "a1")]["spec"]["terminate"] is True
        yml = write_kubeconfig(tmp_path / "kc.yaml", api.url, "t", "team-a")
        r = subprocess.run([agentctl, "kill", "a1"], env={**env, "KUBECONFIG": str(yml)}, capture_output=True,
                           text=True, timeout=DEADLINE, check=False)
        assert r.returncode == 1
        assert r.stderr.count("\n") == 1 and "reading YAML needs PyYAML, which is not installed" in r.stderr, r.stderr
    finally:
        api.stop()


# ------------------------------------------------------------------ the controller image's version


DOCKERFILE = (REPO / "Dockerfile").read_text()


def _version_check() -> str:
    """The build step of the Dockerfile that checks the VERSION build argument."""
    (line,) = [ln for ln in DOCKERFILE.splitlines() if ln.startswith("RUN ") and "tomllib" in ln]
    return line[len("RUN "):]


def test_the_dockerfile_derives_its_version() -> None:
    assert PACKAGE_VERSION not in DOCKERFILE, "the Dockerfile must not hard-code the version"
    stages = DOCKERFILE.split("\nFROM ")
    assert len(stages) >= 2
    for stage in stages[1:]:
        if "VERSION}" in stage:
            assert re.search(r"^ARG VERSION$", stage, re.MULTILINE), "each stage using VERSION declares it"
    assert 'org.opencontainers.image.version="${VERSION}"' in stages[-1]


@pytest.mark.parametrize("given,ok", [(PACKAGE_VERSION, True), ("9.9.9", False), ("", False), (None, False)])
def test_the_build_refuses_a_version_that_is_not_the_packages(tmp_path: Path, given: str | None, ok: bool) -> None:
    shutil.copy2(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    env = {k: v for k, v in os.environ.items() if k != "VERSION"}
    if given is not None:
        env["VERSION"] = given  # a build argument is in the environment of RUN
    r = subprocess.run(["sh", "-c", _version_check()], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=DEADLINE, check=False)
    assert (r.returncode == 0) is ok, r
    if not ok:
        assert r.stderr.strip() == (f"build with --build-arg VERSION={PACKAGE_VERSION} (the version of "
                                    f"pyproject.toml), not {given or ''!r}")


def test_the_docs_say_how_to_build_and_use_the_images() -> None:
    install = (REPO / "docs" / "install.md").read_text()
    for needle in ('--build-arg VERSION="$VERSION"', "docker push", "image.repository", "image.tag"):
        assert needle in install, needle
    agentctl_doc = (REPO / "docs" / "agentctl.md").read_text()
    smallest = agentctl_doc.split("## The smallest agent image", 1)[1].split("\n## ", 1)[0]
    assert "pip wheel --no-deps" in smallest and "./agentctl" in smallest
    assert 'ENTRYPOINT ["agentctl", "run", "--"]' in smallest
    assert re.search(r"^FROM python:3\.\d+[.\d]*-slim", smallest, re.MULTILINE)


def test_the_example_agent_image_installs_agentctl_alone_whatever_the_version() -> None:
    """examples/agent-image/Dockerfile (and its copy in docs/agentctl.md): the dependency-free
    agentctl wheel, matched by name, installed without an index — no version written down, none of
    the controller's dependencies pulled in."""
    example = (REPO / "examples" / "agent-image" / "Dockerfile").read_text()
    docs = (REPO / "docs" / "agentctl.md").read_text()
    for text in (example, docs):
        assert PACKAGE_VERSION not in text, "no version written down"
        assert "agent_controller-" not in text, "the controller's wheel (kopf, kubernetes, aiohttp ...) is not for agents"
    install = re.search(r"^RUN pip install (.*)$", example, re.MULTILINE)
    assert install is not None
    assert "--no-index" in install.group(1) and "/tmp/wheels/agent_controller_agentctl-*-py3-none-any.whl" in install.group(1)
    assert "pip wheel --no-deps -w examples/agent-image/wheels ./agentctl" in example + docs

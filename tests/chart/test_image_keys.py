"""`make images` (e2e/images.py): what names the built images, and what rebuilds them.

No image is built here: the names must be the ones the chart and the operator use, and the cache
key of each image must change with what its build reads, and only with that.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest
from tenantry.config import OperatorConfig

from tests.support.chartkit import REPO


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("e2e_images", REPO / "e2e" / "images.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


images = load_script()


def test_the_images_are_named_as_the_operator_and_the_chart_pull_them() -> None:
    refs = {image.name: image.ref for image in images.images()}
    config = OperatorConfig()
    assert refs["runtime"] == images.normalized(config.runtime_image)
    assert refs["runtime"] == images.normalized(config.sandbox_image)
    assert refs == {
        "runtime": "docker.io/tenantry/runtime:0.1.0",
        "operator": "docker.io/tenantry/operator:0.1.0",
    }


def test_normalized_names_follow_the_kubelet() -> None:
    assert images.normalized("python:3.11-slim") == "docker.io/library/python:3.11-slim"
    assert images.normalized("tenantry/runtime:0.1.0") == "docker.io/tenantry/runtime:0.1.0"
    assert images.normalized("registry.example.com/a/b:1") == "registry.example.com/a/b:1"
    assert images.normalized("localhost/tenantry/x:1") == "localhost/tenantry/x:1"


def test_the_ignore_file_filters_as_docker_does() -> None:
    rules = images.ignore_rules(REPO / "runtime_image" / "Dockerfile.dockerignore")
    assert not images.ignored("runtime_image/install.sh", rules)
    assert not images.ignored("operator/tenantry/render.py", rules)
    assert images.ignored("runtime_image/tenantry_runtime/__pycache__/x.cpython-311.pyc", rules)
    assert images.ignored("operator/tenantry.egg-info/PKG-INFO", rules)
    assert images.ignored("tests/conftest.py", rules)


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of what the two builds read, as the script's repository."""
    files = [
        "pyproject.toml",
        "README.md",
        "charts/tenantry/values.yaml",
        "charts/tenantry/Chart.yaml",
    ]
    for relative in files:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / relative, tmp_path / relative)
    for directory in ("operator", "runtime_image", "operator_image"):
        shutil.copytree(
            REPO / directory, tmp_path / directory, ignore=shutil.ignore_patterns("__pycache__")
        )
    monkeypatch.setattr(images, "REPO", tmp_path)
    return tmp_path


def keys() -> dict[str, str]:
    base = images.base_key()
    return {image.name: images.image_key(image, base) for image in images.images()}


def test_a_key_changes_with_what_its_build_copies_and_only_with_that(checkout: Path) -> None:
    before = keys()
    assert keys() == before

    # Neither build copies tests, nor bytecode the .dockerignore leaves out.
    (checkout / "tests").mkdir()
    (checkout / "tests" / "test_x.py").write_text("x = 1\n")
    cache = checkout / "operator" / "tenantry" / "__pycache__"
    cache.mkdir()
    (cache / "render.cpython-311.pyc").write_bytes(b"\0")
    assert keys() == before

    # Only the runtime build copies its pins.
    with (checkout / "runtime_image" / "constraints.txt").open("a") as pins:
        pins.write("# changed\n")
    runtime_changed = keys()
    assert runtime_changed["runtime"] != before["runtime"]
    assert runtime_changed["operator"] == before["operator"]

    # Both copy the operator's sources (one distribution holds both packages).
    with (checkout / "operator" / "tenantry" / "render.py").open("a") as source:
        source.write("# changed\n")
    both_changed = keys()
    assert both_changed["runtime"] != runtime_changed["runtime"]
    assert both_changed["operator"] != runtime_changed["operator"]

    # So does a file's executable bit (COPY keeps modes).
    install = checkout / "operator_image" / "install.sh"
    install.chmod(install.stat().st_mode ^ 0o111)
    assert keys()["operator"] != both_changed["operator"]


def test_the_base_key_covers_its_package_list(monkeypatch: pytest.MonkeyPatch) -> None:
    before = images.base_key()
    monkeypatch.setattr(images, "BASE_PACKAGES", (*images.BASE_PACKAGES, "curl"))
    assert images.base_key() != before

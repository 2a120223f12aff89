"""The CRD is generated from the models, structural, and in sync with crds/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from tenantry.crd import CRDS, build_crd

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN_KEYS = {
    "$ref",
    "$defs",
    "anyOf",
    "allOf",
    "oneOf",
    "title",
    "propertyNames",
    "patternProperties",
    "const",
}


def walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.items():
            found += walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += walk(value, f"{path}[{index}]")
    return found


def schema() -> dict[str, Any]:
    result: dict[str, Any] = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return result


def test_crds_folder_matches_the_models() -> None:
    assert sorted(p.name for p in (REPO / "crds").iterdir()) == sorted(
        f"{plural}.tenantry.dev.yaml" for plural in CRDS
    )
    for plural, build in CRDS.items():
        committed = yaml.safe_load((REPO / "crds" / f"{plural}.tenantry.dev.yaml").read_text())
        assert committed == build(), "crds/ is stale: run `make crd`"


def test_the_schemas_are_structural() -> None:
    for build in CRDS.values():
        for path, node in walk(build()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]):
            assert not FORBIDDEN_KEYS & set(node), f"{path} has {FORBIDDEN_KEYS & set(node)}"
            assert node.get("additionalProperties", True) is not False, path


def test_the_schema_is_structural() -> None:
    for path, node in walk(schema()):
        assert not FORBIDDEN_KEYS & set(node), f"{path} has {FORBIDDEN_KEYS & set(node)}"
        assert node.get("additionalProperties", True) is not False, path
        if "properties" in node or "items" in node:
            assert "type" in node, f"{path} has no type"


def fields(node: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    """Every named field below a schema node, with its dotted path."""
    found = []
    for name, child in node.get("properties", {}).items():
        found.append((f"{path}.{name}", child))
        found += fields(child.get("items", child), f"{path}.{name}")
    return found


def test_every_field_is_described_for_kubectl_explain() -> None:
    described = fields(schema()["properties"]["spec"], "spec")
    assert len(described) > 30
    for path, node in described:
        assert node.get("description"), f"{path} has no description"


def test_cel_rules_carry_messages() -> None:
    rules = [
        rule for _, node in walk(schema()) for rule in node.get("x-kubernetes-validations", [])
    ]
    assert len(rules) >= 8
    assert all(rule["message"] for rule in rules)


def test_printer_columns_and_names() -> None:
    spec = build_crd()["spec"]
    columns = {
        c["name"]: c.get("priority", 0) for c in spec["versions"][0]["additionalPrinterColumns"]
    }
    assert [name for name, priority in columns.items() if priority == 0] == [
        "Namespace",
        "Ready",
        "Reason",
        "Age",
    ]
    assert spec["scope"] == "Cluster"
    assert spec["names"]["shortNames"] and spec["names"]["categories"] == ["tenantry"]
    assert spec["versions"][0]["subresources"] == {"status": {}}

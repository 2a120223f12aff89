"""kubeconform schemas generated from the cluster itself: no schema registry is reachable here.

Built-in kinds come from the API server's OpenAPI v3 (`/openapi/v3/api/v1`, `.../apis/apps/v1`,
...), CRDs from their `openAPIV3Schema`. Every schema is made standalone (its references kept
under `definitions`) and strict: an object that lists its properties refuses any other, which
is what `kubeconform -strict` expects of its schemas.
"""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

REF_PREFIX = "#/components/schemas/"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
# kubeconform fills this in per object: {{ .Group }} is "v1" for the core group.
LOCATION = "{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}{{ .StrictSuffix }}.json"


def openapi_path(api_version: str) -> str:
    return f"api/{api_version}" if "/" not in api_version else f"apis/{api_version}"


def fetch(kubectl: list[str], api_version: str) -> dict[str, Any]:
    raw = subprocess.run(
        [*kubectl, "get", "--raw", f"/openapi/v3/{openapi_path(api_version)}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    components: dict[str, Any] = json.loads(raw)["components"]["schemas"]
    return components


# Where a schema holds other schemas; everything else (defaults, enums, extensions) is data,
# and a property may well be named "$ref" (JSONSchemaProps has one).
SCHEMA_MAPS = ("properties", "patternProperties", "definitions")
SCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
SCHEMA_ONES = ("items", "additionalProperties", "not")


def rebuild(
    node: dict[str, Any], change: Callable[[dict[str, Any]], dict[str, Any]]
) -> dict[str, Any]:
    """A copy of a schema with `change` applied to it and to every schema inside it."""
    result = dict(node)
    for key in SCHEMA_MAPS:
        if isinstance(node.get(key), dict):
            result[key] = {name: rebuild(sub, change) for name, sub in node[key].items()}
    for key in SCHEMA_LISTS:
        if isinstance(node.get(key), list):
            result[key] = [rebuild(sub, change) for sub in node[key]]
    for key in SCHEMA_ONES:
        if isinstance(node.get(key), dict):
            result[key] = rebuild(node[key], change)
    return change(result)


def strict(node: dict[str, Any]) -> dict[str, Any]:
    """Every object that lists its properties allows no others (unless it keeps unknown fields)."""

    def close(schema: dict[str, Any]) -> dict[str, Any]:
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            return {**schema, "additionalProperties": False}
        return schema

    return rebuild(node, close)


def references(node: dict[str, Any]) -> set[str]:
    found: set[str] = set()

    def collect(schema: dict[str, Any]) -> dict[str, Any]:
        if isinstance(schema.get("$ref"), str):
            found.add(schema["$ref"].removeprefix(REF_PREFIX))
        return schema

    rebuild(node, collect)
    return found


def relink(node: dict[str, Any]) -> dict[str, Any]:
    """Point OpenAPI component references at the standalone schema's `definitions`."""

    def point(schema: dict[str, Any]) -> dict[str, Any]:
        if isinstance(schema.get("$ref"), str):
            return {**schema, "$ref": schema["$ref"].replace(REF_PREFIX, "#/definitions/")}
        return schema

    return rebuild(node, point)


def standalone(root: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """`root` with every component it references, transitively, under `definitions`."""
    wanted, pending = set(), references(root)
    while pending:
        name = pending.pop()
        if name not in wanted:
            wanted.add(name)
            pending |= references(components[name])
    schema = relink(strict(root))
    schema["definitions"] = {name: relink(strict(components[name])) for name in sorted(wanted)}
    return dict(schema)


def write(out: Path, api_version: str, kind: str, schema: dict[str, Any]) -> None:
    group, _, version = api_version.rpartition("/")
    path = out / (group or version) / f"{kind.lower()}_{version}-strict.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(schema))


def builtin(kubectl: list[str], out: Path, kinds: Iterable[tuple[str, str]]) -> None:
    """Schemas for built-in (apiVersion, kind) pairs, from the cluster's OpenAPI v3."""
    documents: dict[str, dict[str, Any]] = {}
    for api_version, kind in sorted(set(kinds)):
        components = documents.setdefault(api_version, fetch(kubectl, api_version))
        group, _, version = api_version.rpartition("/")
        matches = [
            schema
            for schema in components.values()
            if {"group": group, "version": version, "kind": kind}
            in schema.get("x-kubernetes-group-version-kind", [])
        ]
        if len(matches) != 1:
            raise LookupError(
                f"the cluster's OpenAPI has no single schema for {api_version} {kind}"
            )
        write(out, api_version, kind, standalone(matches[0], components))


def custom(kubectl: list[str], out: Path, crd: dict[str, Any]) -> None:
    """Schemas for every version of a CRD, from its openAPIV3Schema."""
    meta = fetch(kubectl, "v1")  # ObjectMeta, as the API server validates it
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    for version in crd["spec"]["versions"]:
        api_version = f"{group}/{version['name']}"
        root = copy.deepcopy(version["schema"]["openAPIV3Schema"])
        root.setdefault("properties", {}).update(
            {
                "apiVersion": {"type": "string", "enum": [api_version]},
                "kind": {"type": "string", "enum": [kind]},
                "metadata": {"$ref": REF_PREFIX + OBJECT_META},
            }
        )
        write(out, api_version, kind, standalone(root, meta))

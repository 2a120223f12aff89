"""Generate the AgentTenant and AgentTenantTemplate CustomResourceDefinitions from the pydantic models.

pydantic emits JSON Schema with `$ref`, `anyOf` for optional fields, titles and
`propertyNames`; a CRD needs a structural schema with none of these. `structural()` rewrites one
into the other; CEL rules and list types attached to the models pass through unchanged.
"""

from __future__ import annotations

import json
from typing import Any

from tenantry.models import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    TEMPLATE_KIND,
    TEMPLATE_PLURAL,
    VERSION,
    AgentTenant,
    AgentTenantSpec,
    AgentTenantStatus,
    AgentTenantTemplate,
    AgentTenantTemplateSpec,
    Model,
)

JsonSchema = dict[str, Any]

# Keys a structural schema keeps; everything else pydantic emits (title, additionalProperties:
# false, propertyNames, ...) is dropped or translated.
KEPT_KEYS = frozenset(
    {
        "type",
        "description",
        "default",
        "enum",
        "format",
        "pattern",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
        "x-kubernetes-validations",
        "x-kubernetes-list-type",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-preserve-unknown-fields",
    }
)


def structural(schema: JsonSchema, definitions: dict[str, JsonSchema]) -> JsonSchema:
    """Rewrite one pydantic JSON Schema node into a structural OpenAPI v3 schema node."""
    if "$ref" in schema:
        target = definitions[schema["$ref"].rsplit("/", 1)[-1]]
        # Keys beside the $ref (the field's own description, default) win over the target's.
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return structural(merged, definitions)
    if "anyOf" in schema:
        # Optional[X] is anyOf [X, null]: the field is simply not required.
        options = [option for option in schema["anyOf"] if option.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"a union cannot be expressed in a structural schema: {schema}")
        outer = {
            k: v for k, v in schema.items() if k != "anyOf" and not (k == "default" and v is None)
        }
        return structural({**options[0], **outer}, definitions)

    node: JsonSchema = {key: value for key, value in schema.items() if key in KEPT_KEYS}
    if node.get("default", ...) is None:
        del node["default"]
    rules = list(node.get("x-kubernetes-validations", []))
    if "properties" in schema:
        node["properties"] = {
            name: structural(child, definitions) for name, child in schema["properties"].items()
        }
        if schema.get("required"):
            node["required"] = sorted(schema["required"])
    if "items" in schema:
        node["items"] = structural(schema["items"], definitions)
    if isinstance(schema.get("additionalProperties"), dict):
        node["additionalProperties"] = structural(schema["additionalProperties"], definitions)
    if "patternProperties" in schema:
        # A map with constrained keys. Structural schemas have neither patternProperties nor
        # propertyNames: the values get additionalProperties and the keys a CEL rule.
        ((pattern, values),) = schema["patternProperties"].items()
        node["additionalProperties"] = structural(values, definitions)
        max_length = schema.get("propertyNames", {}).get("maxLength", 253)
        rules.append(
            {
                "rule": f"self.all(k, k.size() <= {max_length} && k.matches({json.dumps(pattern)}))",
                "message": f"every key must be at most {max_length} characters and match {pattern}",
            }
        )
    if rules:
        node["x-kubernetes-validations"] = rules
    return node


def model_schema(model: type[Model]) -> JsonSchema:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return structural(raw, raw.get("$defs", {}))


def root_rules() -> list[dict[str, str]]:
    extra = AgentTenant.model_config.get("json_schema_extra")
    assert isinstance(extra, dict)
    rules: list[dict[str, str]] = extra["x-kubernetes-validations"]  # type: ignore[assignment]
    return rules


def printer_columns() -> list[dict[str, Any]]:
    def condition(kind: str, field: str) -> str:
        return f'.status.conditions[?(@.type=="{kind}")].{field}'

    return [
        {"name": "Namespace", "type": "string", "jsonPath": ".status.namespace"},
        {"name": "Ready", "type": "string", "jsonPath": condition("Ready", "status")},
        {"name": "Reason", "type": "string", "jsonPath": condition("Ready", "reason")},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        {"name": "Display Name", "type": "string", "jsonPath": ".spec.displayName", "priority": 1},
        {"name": "Sandbox", "type": "boolean", "jsonPath": ".spec.sandbox.enabled", "priority": 1},
        {
            "name": "Message",
            "type": "string",
            "jsonPath": condition("Ready", "message"),
            "priority": 1,
        },
    ]


def cluster_crd(
    kind: str, plural: str, short_names: list[str], version: dict[str, Any]
) -> dict[str, Any]:
    """A cluster-scoped CRD of Tenantry's API group, with one served and stored version."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {
                "app.kubernetes.io/name": "tenantry",
                "app.kubernetes.io/part-of": "tenantry",
            },
        },
        "spec": {
            "group": GROUP,
            "scope": "Cluster",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": ["tenantry"],
            },
            "versions": [{"name": VERSION, "served": True, "storage": True, **version}],
        },
    }


def build_crd() -> dict[str, Any]:
    """The AgentTenant CRD, as the API server expects it."""
    spec_schema = model_schema(AgentTenantSpec)
    spec_schema["description"] = "The desired state of the tenant."
    status_schema = model_schema(AgentTenantStatus)
    status_schema["description"] = "The observed state of the tenant, written by the operator."
    return cluster_crd(
        KIND,
        PLURAL,
        ["at", "tenant"],
        {
            "subresources": {"status": {}},
            "additionalPrinterColumns": printer_columns(),
            "schema": {
                "openAPIV3Schema": {
                    "type": "object",
                    "description": (AgentTenant.__doc__ or "").strip()
                    + f" ({API_VERSION}; the name is the tenant id and the TopicId source.)",
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec_schema,
                        "status": status_schema,
                    },
                    "x-kubernetes-validations": root_rules(),
                }
            },
        },
    )


def build_template_crd() -> dict[str, Any]:
    """The AgentTenantTemplate CRD: cluster-scoped, written by cluster admins only."""
    spec_schema = model_schema(AgentTenantTemplateSpec)
    spec_schema["description"] = "The tenants to select, and the templates rendered for each."
    columns = [
        {"name": "Templates", "type": "string", "jsonPath": ".spec.templates[*].name"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        {"name": "Selector", "type": "string", "jsonPath": ".spec.selector", "priority": 1},
    ]
    return cluster_crd(
        TEMPLATE_KIND,
        TEMPLATE_PLURAL,
        ["att"],
        {
            "additionalPrinterColumns": columns,
            "schema": {
                "openAPIV3Schema": {
                    "type": "object",
                    "description": (AgentTenantTemplate.__doc__ or "").strip()
                    + f" ({API_VERSION}; docs/templates.md.)",
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec_schema,
                    },
                    "required": ["spec"],
                }
            },
        },
    )


CRDS = {PLURAL: build_crd, TEMPLATE_PLURAL: build_template_crd}

"""The platform admin's AgentTenantTemplates, rendered for one tenant. Pure: no I/O.

A template is Jinja2 text, so this is the one place a manifest is made from text. Three things
keep a tenant's strings from changing its structure: Jinja2's immutable sandbox (no attribute
walking, no file system, no environment: the context below is all it sees); no value ever passes
through the YAML parser — every `{{ value }}` is written as a placeholder the parser reads as
plain text, and the values take their places in the parsed object (`Placeholders`), so a display
name with quotes, brackets or newlines stays one string wherever the template puts it; and the
object is checked before it becomes a child (`checked`): exactly one, of a kind the operator
allows, in the tenant's namespace, under a name that is not one of Tenantry's. Labels, owner and
hash are then the operator's, as on every child.

(The first version wrote each value as a quoted JSON scalar. Review found that a value inside
quotes or a one-line `[...]` in the template broke out of them: the quote that opened the JSON
string closed the template's.)
"""

from __future__ import annotations

import contextvars
import copy
import functools
import json
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml

from tenantry.config import OperatorConfig
from tenantry.kinds import ChildKind, templated_kinds
from tenantry.models import (
    DNS_SUBDOMAIN,
    OPERATOR_CHILD_NAMES,
    QUANTITY,
    RESERVED_NAME_PREFIX,
    AgentTenant,
    AgentTenantTemplate,
    BrokenTemplate,
    ChildTemplate,
    template_selects,
)
from tenantry.names import HTTP_PORT, OPERATOR_BINDING, RUNTIME, SANDBOX, SESSIONS
from tenantry.render.tenant import (
    ClusterFacts,
    Manifest,
    claim_storage,
    owner_references,
    pod_labels,
    tenant_labels,
)

# The most one template may render: a manifest, not a data dump.
MAX_OUTPUT_BYTES = 256 * 1024
# Names no templated object may take, whatever its kind: the operator's own children's.
RESERVED_NAMES = frozenset({*OPERATOR_CHILD_NAMES, SESSIONS, OPERATOR_BINDING})
# Annotation on each templated child: which template made it (for people and `tenantry audit`).
TEMPLATE_ANNOTATION = "tenantry.dev/template"
OPERATOR_KEY_PREFIX = "tenantry.dev/"
METADATA_KEYS = ("name", "namespace", "labels", "annotations")


class TemplateRefused(ValueError):
    """A template that cannot render a child for this tenant: why, naming the template."""

    def __init__(self, template: str, item: str | None, message: str) -> None:
        where = f"AgentTenantTemplate {template}" + (f", template {item}" if item else "")
        super().__init__(f"{where}: {shortened(message, MAX_MESSAGE)}")
        self.template = template


# A refusal is a condition's message: bounded (the status keeps it; a tenant's value quoted in
# it could otherwise outgrow what the API server stores, found by review).
MAX_MESSAGE = 2048


def shortened(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Placeholders:
    """The values one render wrote, each in the text as a word of its own that YAML reads as a
    plain string, put back in the parsed object (`substituted`). The word carries a random
    nonce, so neither the template's author nor a tenant can write one that is taken for a value."""

    def __init__(self) -> None:
        self.nonce = secrets.token_hex(8)
        self.values: list[Any] = []
        self.pattern = re.compile(f"tenantryvalue{self.nonce}n([0-9]+)x")

    def add(self, value: Any) -> str:
        import jinja2  # noqa: PLC0415 - loaded already: a template is rendering

        if isinstance(value, jinja2.Undefined):
            str(value)  # StrictUndefined raises, saying what is undefined (or unsafe)
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise TypeError(
                f"a {type(value).__name__} cannot be written as a value: write strings, numbers, "
                "booleans, lists or maps"
            ) from None
        if isinstance(value, str):
            # Text a {% set %} block or a macro rendered holds placeholders of this render.
            value = self.pattern.sub(self.text, value)
        self.values.append(value)
        return f"tenantryvalue{self.nonce}n{len(self.values) - 1}x"

    def text(self, match: re.Match[str]) -> str:
        value = self.values[int(match[1])]
        if isinstance(value, list | dict):
            raise ValueError(
                "a list or a map cannot be part of a longer text: give it a field of its own"
            )
        return value if isinstance(value, str) else json.dumps(value)

    def substituted(self, node: Any) -> Any:
        """The parsed object with every placeholder replaced: a whole scalar by the value itself
        (a string, number, list or map), one inside a longer string by its text."""
        if isinstance(node, dict):
            # A key is text (a list or a map cannot be one): its placeholders by their text.
            return {
                self.pattern.sub(self.text, k) if isinstance(k, str) else k: self.substituted(v)
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [self.substituted(item) for item in node]
        if isinstance(node, str):
            whole = self.pattern.fullmatch(node)
            if whole:
                return copy.deepcopy(self.values[int(whole[1])])
            return self.pattern.sub(self.text, node)
        return node


# The placeholders of the render in progress (rendering is synchronous: one at a time per thread).
CURRENT: contextvars.ContextVar[Placeholders] = contextvars.ContextVar("placeholders")


@functools.cache
def environment() -> Any:
    """Jinja2's immutable sandbox as templates use it, made on first use: Jinja2 is 2.3 MiB an
    operator whose tenants no template selects never loads (docs/benchmarks.md, memory)."""
    import jinja2  # noqa: PLC0415
    from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: PLC0415

    class Environment(ImmutableSandboxedEnvironment):
        """With `*` refused when it would build a string or a list past the output limit
        (`"x" * 10**9` would otherwise be built before any limit applies)."""

        intercepted_binops = frozenset({"*"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            sized, count = (left, right) if isinstance(right, int) else (right, left)
            too_big = isinstance(sized, str | list) and isinstance(count, int)
            if too_big and len(sized) * count > MAX_OUTPUT_BYTES:
                raise ValueError(f"renders more than {MAX_OUTPUT_BYTES // 1024} KiB")
            return super().call_binop(context, operator, left, right)

    @jinja2.pass_context  # so that Jinja2 never finalizes a constant once, at compile time
    def placeholder(context: Any, value: Any) -> str:
        """How every `{{ value }}` is written (Jinja2's `finalize`)."""
        return CURRENT.get().add(value)

    sandbox = Environment(
        undefined=jinja2.StrictUndefined,
        finalize=placeholder,
        autoescape=False,
        keep_trailing_newline=True,
    )
    # Jinja2's default globals (lipsum, cycler, joiner, namespace) are not part of the context,
    # and its `random` filter would make every pass render something new, a write each time.
    sandbox.globals = {"range": sandbox.globals["range"], "dict": dict}
    del sandbox.filters["random"]
    return sandbox


class OutputLoader(yaml.SafeLoader):
    """YAML's safe loader, without aliases: ten nested `*a` aliases of ten make a billion nodes
    the moment the object is hashed or sent."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("aliases (*name) are not allowed in a template's output")
        return super().compose_node(parent, index)


@functools.lru_cache(maxsize=512)
def compiled(text: str) -> Any:
    """One template, compiled once per text (every tenant it selects renders it)."""
    return environment().from_string(text)


def template_context(tenant: AgentTenant, namespace: str, config: OperatorConfig) -> dict[str, Any]:
    """All a template sees (docs/templates.md): plain data, copied, never the models."""
    return {
        "tenant": {
            "name": tenant.name,
            "namespace": namespace,
            "displayName": tenant.spec.display_name or "",
            "labels": dict(tenant.metadata.labels),
            "annotations": dict(tenant.metadata.annotations),
            "topicSource": tenant.name,
            "sandbox": tenant.spec.sandbox.enabled,
            "sessions": tenant.spec.runtime.sessions.enabled,
            "runtime": {
                "service": RUNTIME,
                "port": HTTP_PORT,
                "podLabels": pod_labels(tenant, RUNTIME),
            },
            "sandboxService": SANDBOX if tenant.spec.sandbox.enabled else "",
        },
        "operator": {
            "namespacePrefix": config.namespace_prefix,
            "secretSourceNamespace": config.secret_source_namespace,
        },
    }


def text_of(template: ChildTemplate, context: Mapping[str, Any]) -> str:
    """The template's output, stopped as soon as it grows past MAX_OUTPUT_BYTES."""
    parts, size = [], 0
    for part in compiled(template.template).generate(context):
        size += len(part.encode())
        if size > MAX_OUTPUT_BYTES:
            raise ValueError(f"renders more than {MAX_OUTPUT_BYTES // 1024} KiB")
        parts.append(part)
    return "".join(parts)


def rendered_object(template: ChildTemplate, context: Mapping[str, Any]) -> Any:
    """The one object a template renders, its values in their places."""
    values = Placeholders()
    token = CURRENT.set(values)
    try:
        text = text_of(template, context)
    finally:
        CURRENT.reset(token)
    documents = [d for d in yaml.load_all(text, Loader=OutputLoader) if d is not None]
    if len(documents) != 1:
        raise ValueError(f"the output must be exactly one object, not {len(documents)}")
    document = values.substituted(documents[0])
    if len(json.dumps(document)) > MAX_OUTPUT_BYTES:
        raise ValueError(f"renders more than {MAX_OUTPUT_BYTES // 1024} KiB")
    return document


def problem(error: Exception) -> str:
    """A Jinja2, YAML or other error in words, with the line where Jinja2 knows it."""
    import jinja2  # noqa: PLC0415 - loaded already: a template was compiled

    if isinstance(error, jinja2.TemplateSyntaxError):
        return f"line {error.lineno}: {error.message}"
    if isinstance(error, jinja2.UndefinedError):
        return f"{error.message}: the context has tenant and operator only (docs/templates.md)"
    if isinstance(error, yaml.YAMLError):
        return "the output is not YAML: " + " ".join(str(error).split())
    return str(error) or type(error).__name__


def checked(
    document: Any, namespace: str, allowed: Mapping[str, ChildKind]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The object a template rendered, and its metadata, if it may be a child of this tenant."""
    if not isinstance(document, dict):
        raise ValueError("the output must be one object (a YAML mapping)")
    api_version, kind = document.get("apiVersion"), document.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        raise ValueError("the object needs apiVersion and kind")
    row = allowed.get(kind)
    if row is None or row.api_version != api_version:
        allowlist = ", ".join(f"{r.api_version}/{r.kind}" for r in allowed.values()) or "none"
        raise ValueError(
            f"{api_version}/{kind} is not a kind templates may render on this cluster (the "
            f"operator's --template-kinds allows: {allowlist})"
        )
    if kind == "PersistentVolumeClaim" and not re.fullmatch(
        QUANTITY, claim_storage(document) or ""
    ):
        raise ValueError(
            "spec.resources.requests.storage must be a quantity such as 1Gi: the tenant's quota "
            "counts every claim"
        )
    if "status" in document:
        raise ValueError("status is written by controllers, never by a template: remove it")
    meta = document.get("metadata")
    if not isinstance(meta, dict):
        raise ValueError("the object needs metadata with a name")
    check_metadata(meta, namespace)
    return document, meta


def check_metadata(meta: dict[str, Any], namespace: str) -> None:
    extra = sorted(set(meta) - set(METADATA_KEYS))
    if extra:
        raise ValueError(
            f"metadata.{extra[0]} is the API server's or the operator's to set: a template sets "
            f"only {', '.join(METADATA_KEYS)}"
        )
    name = meta.get("name")
    if not isinstance(name, str) or len(name) > 253 or not re.fullmatch(DNS_SUBDOMAIN, name):
        raise ValueError(f"metadata.name {name!r} must be a DNS-1123 subdomain")
    if name in RESERVED_NAMES or name.startswith(RESERVED_NAME_PREFIX):
        raise ValueError(
            f"metadata.name {name!r} belongs to Tenantry's own children (it uses "
            f"{', '.join(sorted(RESERVED_NAMES))} and {RESERVED_NAME_PREFIX}*): choose another name"
        )
    if meta.get("namespace", namespace) != namespace:
        raise ValueError(
            f"metadata.namespace {meta['namespace']!r}: a template writes into the tenant's own "
            f"namespace ({namespace}) only; leave metadata.namespace out"
        )
    for field in ("labels", "annotations"):
        values = meta.get(field) or {}
        if not isinstance(values, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in values.items()
        ):
            raise ValueError(f"metadata.{field} must map strings to strings")
        owned = sorted(k for k in values if k.startswith(OPERATOR_KEY_PREFIX))
        if owned:
            raise ValueError(f"metadata.{field}: {owned[0]} is the operator's to set")


def render_one(
    tenant: AgentTenant,
    owner: AgentTenantTemplate,
    template: ChildTemplate,
    context: Mapping[str, Any],
    namespace: str,
    facts: ClusterFacts,
    allowed: Mapping[str, ChildKind],
) -> Manifest:
    try:
        document, meta = checked(rendered_object(template, context), namespace, allowed)
    except Exception as error:  # any failure of the admin's template is its message
        raise TemplateRefused(owner.name, template.name, problem(error)) from None
    labels = tenant_labels(tenant)
    clash = sorted(set(meta.get("labels") or {}) & set(labels))
    if clash:
        raise TemplateRefused(
            owner.name, template.name, f"metadata.labels: {clash[0]} is the operator's to set"
        )
    metadata: dict[str, Any] = {
        "name": meta["name"],
        "namespace": namespace,
        "labels": {**(meta.get("labels") or {}), **labels},
        "annotations": {
            **(meta.get("annotations") or {}),
            TEMPLATE_ANNOTATION: f"{owner.name}/{template.name}",
        },
    }
    references = owner_references(tenant, facts)
    if references:
        metadata["ownerReferences"] = references
    return {**document, "metadata": metadata}


def is_templated(manifest: Manifest) -> bool:
    """Whether a child is one an AgentTenantTemplate rendered."""
    return TEMPLATE_ANNOTATION in (manifest["metadata"].get("annotations") or {})


def selected(
    tenant: AgentTenant, templates: Iterable[AgentTenantTemplate | BrokenTemplate]
) -> list[AgentTenantTemplate]:
    """The templates whose selector picks this tenant, by name (so the output's order is
    stable); TemplateRefused when one of them cannot be read."""
    labels = dict(tenant.metadata.labels)
    chosen = sorted((t for t in templates if template_selects(t, labels)), key=lambda t: t.name)
    for template in chosen:
        if isinstance(template, BrokenTemplate):
            raise TemplateRefused(
                template.name, None, f"cannot be read ({template.problem}): correct it or delete it"
            )
    return [t for t in chosen if isinstance(t, AgentTenantTemplate)]


def render_templates(
    tenant: AgentTenant,
    namespace: str,
    facts: ClusterFacts,
    config: OperatorConfig,
    templates: Sequence[AgentTenantTemplate | BrokenTemplate],
) -> list[Manifest]:
    """Every templated child of a tenant; TemplateRefused for the first template that fails."""
    chosen = selected(tenant, templates)
    if not chosen:
        return []
    allowed = {row.kind: row for row in templated_kinds(config.template_kinds)}
    context = template_context(tenant, namespace, config)
    return [
        render_one(tenant, owner, template, context, namespace, facts, allowed)
        for owner in chosen
        for template in owner.spec.templates
    ]

"""`tenantry run | crd | render`: the operator's command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tenantry.config import OperatorConfig
from tenantry.crd import build_crd
from tenantry.models import KIND, AgentTenant
from tenantry.render import render


def dump_all(documents: Sequence[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False, explicit_start=True)


def config_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by `run` and `render`; each also reads a TENANTRY_* environment variable."""
    defaults = OperatorConfig()
    for name, help_text in (
        ("namespace_prefix", 'tenant namespaces are "<prefix>-<name>" unless the tenant names one'),
        ("secret_source_namespace", "the namespace whose Secrets tenants may copy"),
        ("runtime_image", "the default runtime image"),
        ("sandbox_image", "the default sandbox image"),
    ):
        env = f"TENANTRY_{name.upper()}"
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=os.environ.get(env, getattr(defaults, name)),
            help=f"{help_text} (env {env}; default %(default)s)",
        )


def operator_config(args: argparse.Namespace, **extra: Any) -> OperatorConfig:
    values = {
        name: getattr(args, name)
        for name in (
            "namespace_prefix",
            "secret_source_namespace",
            "runtime_image",
            "sandbox_image",
        )
    }
    try:
        return OperatorConfig(**values, **extra)
    except ValidationError as error:
        raise SystemExit(f"tenantry: invalid configuration: {error}") from None


def load_tenants(path: str) -> list[AgentTenant]:
    """The AgentTenants of a YAML file ("-" for stdin), with errors that name file and field."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    tenants = []
    for index, document in enumerate(yaml.safe_load_all(text)):
        if not document:
            continue
        if not isinstance(document, dict) or document.get("kind") != KIND:
            raise SystemExit(f"tenantry: {path}: document {index + 1} is not an {KIND}")
        try:
            tenants.append(AgentTenant.model_validate(document))
        except ValidationError as error:
            problems = "\n".join(
                f"  {'.'.join(str(p) for p in item['loc']) or '(document)'}: {item['msg']}"
                for item in error.errors()
            )
            raise SystemExit(
                f"tenantry: {path}: document {index + 1} is not a valid {KIND}:\n{problems}"
            ) from None
    return tenants


def command_crd(_: argparse.Namespace) -> None:
    sys.stdout.write(dump_all([build_crd()]))


def command_render(args: argparse.Namespace) -> None:
    config = operator_config(args)
    manifests = [
        manifest for tenant in load_tenants(args.file) for manifest in render(tenant, config)
    ]
    sys.stdout.write(dump_all(manifests))


def command_run(args: argparse.Namespace) -> None:
    # Imported here: `crd` and `render` must work offline, without Kopf or the handlers.
    import kopf  # noqa: PLC0415

    import tenantry.handlers  # noqa: F401, PLC0415 - registers the handlers
    from tenantry.logs import configure  # noqa: PLC0415

    configure(args.log_level)
    config = operator_config(
        args, drift_interval_seconds=args.drift_interval, max_concurrent_reconciles=args.concurrency
    )
    memo = kopf.Memo(config=config, operator_namespace=args.operator_namespace)
    kopf.run(clusterwide=True, standalone=True, memo=memo, liveness_endpoint=args.liveness)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="tenantry", description="An isolated AutoGen runtime per tenant, on Kubernetes."
    )
    commands = root.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run", help="run the operator against the cluster in KUBECONFIG or in-cluster"
    )
    config_arguments(run)
    run.add_argument(
        "--drift-interval",
        type=float,
        default=float(os.environ.get("TENANTRY_DRIFT_INTERVAL", "300")),
        help="seconds between drift corrections of every tenant (env TENANTRY_DRIFT_INTERVAL; default %(default)s)",
    )
    run.add_argument(
        "--concurrency",
        type=int,
        default=int(os.environ.get("TENANTRY_CONCURRENCY", "8")),
        help="tenants reconciled at once (env TENANTRY_CONCURRENCY; default %(default)s)",
    )
    run.add_argument(
        "--operator-namespace",
        default=os.environ.get("POD_NAMESPACE"),
        help="the operator's own namespace, never given to a tenant (env POD_NAMESPACE)",
    )
    run.add_argument(
        "--liveness",
        default=None,
        help="serve a liveness endpoint, e.g. http://0.0.0.0:8080/healthz",
    )
    run.add_argument("--log-level", default=os.environ.get("TENANTRY_LOG_LEVEL", "INFO"))
    run.set_defaults(handler=command_run)

    crd = commands.add_parser("crd", help="print the AgentTenant CustomResourceDefinition")
    crd.set_defaults(handler=command_crd)

    render_command = commands.add_parser(
        "render",
        help="print, offline, the manifests the operator applies for the AgentTenants in FILE",
        description=(
            "Print the child manifests of each AgentTenant in FILE, exactly as the operator applies "
            "them, except what only the cluster knows: owner references (the tenant's uid), the data "
            "of copied Secrets and of the sandbox token (never printed), and the config hash that "
            "covers that data."
        ),
    )
    render_command.add_argument("file", help='a YAML file of AgentTenants, or "-" for stdin')
    config_arguments(render_command)
    render_command.set_defaults(handler=command_render)
    return root


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main()

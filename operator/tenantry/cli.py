"""`tenantry run | crd | render | audit`: the operator's command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml
from pydantic import ValidationError

from tenantry.config import OperatorConfig
from tenantry.crd import CRDS
from tenantry.kinds import templated_kinds
from tenantry.models import AgentTenant, AgentTenantTemplate, human_errors
from tenantry.render import render
from tenantry.render import tenant_namespace as render_namespace

if TYPE_CHECKING:
    import kopf

    from tenantry.leader import Timings

logger = logging.getLogger("tenantry.cli")
T = TypeVar("T")


def dump_all(documents: Sequence[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False, explicit_start=True)


# The platform's policy for tenant manifests (config.py documents each; policy.py applies it).
POLICY_FLAGS = (
    (
        "allowed_images",
        'images tenants may name, comma-separated; "prefix/" allows a registry or path',
    ),
    ("tenant_image_pull_policy", "imagePullPolicy of images tenants name"),
    ("image_pull_policy", "imagePullPolicy of the default runtime and sandbox images"),
    ("allowed_runtime_classes", "RuntimeClasses tenants may name, comma-separated"),
    ("max_quota_cpu", "the largest spec.quota.cpu"),
    ("max_quota_memory", "the largest spec.quota.memory"),
    ("max_quota_pods", "the largest spec.quota.pods"),
    ("max_session_storage", "the largest spec.runtime.sessions.storage.size"),
    ("namespace_pattern", 'the pattern every spec.namespace must match (empty: "<prefix>-*")'),
    ("cluster_cidrs", "the cluster's pod, service and node CIDRs, never reached through egress"),
    (
        "template_kinds",
        "kinds AgentTenantTemplates may render, apiVersion/Kind[=plural], comma-separated",
    ),
)


def flag_default(value: Any) -> Any:
    return ",".join(value) if isinstance(value, tuple) else value


def config_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by `run`, `render` and `audit`; each also reads a TENANTRY_* environment variable."""
    defaults = OperatorConfig()
    for name, help_text in (
        ("namespace_prefix", 'tenant namespaces are "<prefix>-<name>" unless the tenant names one'),
        ("secret_source_namespace", "the namespace whose Secrets tenants may copy"),
        ("runtime_image", "the default runtime image"),
        ("sandbox_image", "the default sandbox image"),
        (
            "service_account",
            'the operator\'s ServiceAccount, "namespace/name": Secrets through per-tenant RoleBindings',
        ),
        ("secrets_role", "the ClusterRole those RoleBindings grant"),
        *POLICY_FLAGS,
    ):
        env = f"TENANTRY_{name.upper()}"
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=os.environ.get(env, flag_default(getattr(defaults, name))),
            help=f"{help_text} (env {env}; default %(default)r)",
        )


def operator_config(args: argparse.Namespace, **extra: Any) -> OperatorConfig:
    values = {
        name: getattr(args, name)
        for name in (
            "namespace_prefix",
            "secret_source_namespace",
            "runtime_image",
            "sandbox_image",
            "service_account",
            "secrets_role",
            *(name for name, _ in POLICY_FLAGS),
        )
    }
    try:
        config = OperatorConfig(**values, **extra)
    except ValidationError as error:
        problems = "\n".join(f"  {problem}" for problem in human_errors(error))
        raise SystemExit(f"tenantry: invalid configuration:\n{problems}") from None
    try:
        templated_kinds(config.template_kinds)
    except ValueError as error:
        raise SystemExit(f"tenantry: invalid configuration:\n  template_kinds: {error}") from None
    return config


def boolean(text: str) -> bool:
    """A flag's or environment variable's true or false."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is neither true nor false: use true or false")


M = TypeVar("M", AgentTenant, AgentTenantTemplate)


def load_documents(path: str, model: type[M]) -> list[M]:
    """The objects of one kind in a YAML file ("-" for stdin), with errors that name file and field."""
    kind = model.model_fields["kind"].default
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    found = []
    for index, document in enumerate(yaml.safe_load_all(text)):
        if not document:
            continue
        if not isinstance(document, dict) or document.get("kind") != kind:
            raise SystemExit(f"tenantry: {path}: document {index + 1} is not an {kind}")
        try:
            found.append(model.model_validate(document))
        except ValidationError as error:
            problems = "\n".join(f"  {problem}" for problem in human_errors(error))
            raise SystemExit(
                f"tenantry: {path}: document {index + 1} is not a valid {kind}:\n{problems}"
            ) from None
    return found


def load_tenants(path: str) -> list[AgentTenant]:
    return load_documents(path, AgentTenant)


def command_crd(args: argparse.Namespace) -> None:
    sys.stdout.write(dump_all([CRDS[args.resource]()]))


def command_render(args: argparse.Namespace) -> None:
    from tenantry.policy import violations  # noqa: PLC0415
    from tenantry.render import DuplicateChild, TemplateRefused  # noqa: PLC0415

    config = operator_config(args)
    templates = [t for path in args.templates for t in load_documents(path, AgentTenantTemplate)]
    manifests = []
    for tenant in load_tenants(args.file):
        problems = violations(tenant, config)
        if problems:
            raise SystemExit(
                f"tenantry: {args.file}: AgentTenant {tenant.name} is not allowed on this cluster:\n"
                + "\n".join(f"  {field}: {problem}" for field, problem in problems)
            )
        try:
            manifests += render(tenant, config, templates=templates)
        except (DuplicateChild, TemplateRefused) as error:
            raise SystemExit(f"tenantry: {args.file}: AgentTenant {tenant.name}: {error}") from None
    sys.stdout.write(dump_all(manifests))


def cluster_templates(client: Any) -> list[AgentTenantTemplate]:
    """Every AgentTenantTemplate on the cluster; none where its CRD is not installed."""
    from lightkube.core.exceptions import ApiError  # noqa: PLC0415

    from tenantry.resources import AgentTenantTemplateResource  # noqa: PLC0415

    try:
        return [
            AgentTenantTemplate.model_validate(t.to_dict())
            for t in client.list(AgentTenantTemplateResource)
        ]
    except ApiError as error:
        if error.status.code != 404:
            raise
        return []


def command_audit(args: argparse.Namespace) -> None:
    """Check every tenant (or one) against the isolation invariants; exit 1 on any violation."""
    # Imported here: only `audit` and `run` talk to a cluster.
    from lightkube import Client  # noqa: PLC0415
    from lightkube.core.exceptions import ApiError  # noqa: PLC0415
    from lightkube.resources.core_v1 import Namespace  # noqa: PLC0415

    from tenantry.audit import audit_tenant, table  # noqa: PLC0415
    from tenantry.resources import AUDITED_KINDS, AgentTenantResource  # noqa: PLC0415

    config = operator_config(args)
    client = Client(field_manager="tenantry-audit")
    if args.tenant:
        try:
            bodies = [client.get(AgentTenantResource, args.tenant).to_dict()]  # type: ignore[no-untyped-call]
        except ApiError as error:
            raise SystemExit(
                f"tenantry audit: AgentTenant {args.tenant!r}: {error.status.message}"
            ) from None
    else:
        bodies = [t.to_dict() for t in client.list(AgentTenantResource)]  # type: ignore[no-untyped-call]
    templates = cluster_templates(client)
    kinds = (*AUDITED_KINDS, *(c.resource for c in templated_kinds(config.template_kinds)))
    findings = []
    names = []
    for body in bodies:
        tenant = AgentTenant.model_validate(body)
        names.append(tenant.name)
        namespace_name = render_namespace(tenant, config)
        try:
            namespace: dict[str, Any] | None = client.get(Namespace, namespace_name).to_dict()
        except ApiError as error:
            if error.status.code != 404:
                raise
            namespace = None
        objects = []
        if namespace is not None:
            for resource in dict.fromkeys(kinds):
                for obj in client.list(resource, namespace=namespace_name):
                    objects.append({**obj.to_dict(), "kind": resource.__name__})
        findings += audit_tenant(
            tenant, body["metadata"]["uid"], config, namespace, objects, templates
        )
    if args.json:
        sys.stdout.write(
            json.dumps({"tenants": names, "violations": [f.as_dict() for f in findings]}, indent=2)
            + "\n"
        )
    else:
        sys.stdout.write(table(findings, names) + "\n")
    if findings:
        raise SystemExit(1)


def command_run(args: argparse.Namespace) -> None:
    # Imported here: `crd` and `render` must work offline, without Kopf or the handlers.
    import kopf  # noqa: PLC0415

    import tenantry.handlers  # noqa: F401, PLC0415 - importing registers Kopf's handlers
    from tenantry.leader import Timings  # noqa: PLC0415
    from tenantry.logs import configure  # noqa: PLC0415
    from tenantry.metrics import parse_address  # noqa: PLC0415

    configure(args.log_level)
    config = operator_config(
        args,
        drift_interval_seconds=args.drift_interval,
        max_concurrent_reconciles=args.concurrency,
        tenant_selector=args.tenant_selector,
    )
    timings = Timings(args.lease_duration, args.lease_renew_deadline, args.lease_retry_period)
    problems = timings.problems() if args.leader_election else []
    if args.metrics_address:
        try:
            parse_address(args.metrics_address)
        except ValueError as error:
            problems.append(f"--metrics-address (env TENANTRY_METRICS_ADDRESS): {error}")
    if problems:
        raise SystemExit("tenantry: invalid configuration:\n  " + "\n  ".join(problems))
    memo = kopf.Memo(config=config, operator_namespace=args.operator_namespace)
    asyncio.run(operate(args, memo, timings))


async def operate(args: argparse.Namespace, memo: kopf.Memo, timings: Timings) -> None:
    """Serve metrics, wait for the leader Lease when elections are on, then run Kopf.

    A leader that loses the Lease exits at once with status 1, in the middle of whatever it
    does: nothing may reconcile without the Lease, and a restarted pod comes back as a standby.
    On SIGTERM the leader stops Kopf gracefully and releases the Lease, so a standby takes over
    at its next try instead of a lease duration later.
    """
    import kopf  # noqa: PLC0415

    # Not exported by kopf: its type of operator identities (a str).
    from kopf._core.engines.peering import Identity  # noqa: PLC0415

    from tenantry import metrics  # noqa: PLC0415
    from tenantry.handlers import NoObjectMemories  # noqa: PLC0415
    from tenantry.leader import LeaderElector, default_identity  # noqa: PLC0415
    from tenantry.transport import api_client  # noqa: PLC0415

    stopping, kopf_ready = asyncio.Event(), asyncio.Event()
    stop_on_signals(stopping)
    runner = await metrics.serve(args.metrics_address) if args.metrics_address else None
    elector = None
    try:
        if args.leader_election:
            elector = LeaderElector(
                api_client(), args.leader_election_namespace, default_identity(), timings
            )
            if not await first_of(elector.acquire(), stopping):
                return  # stopped while waiting: nothing was held
        metrics.LEADER.set(1)
        # Both start before Kopf: Kopf waits for, then cancels, tasks created after it started.
        holding = asyncio.create_task(elector.hold()) if elector else None
        # Kopf puts in its own signal handlers, which leave its waiter on our stop flag hanging
        # for 5s at exit; ours stop it as well, through the flag, without that delay.
        signals = asyncio.create_task(first_of(kopf_ready.wait(), stopping))
        signals.add_done_callback(lambda _: stop_on_signals(stopping))
        operator = asyncio.create_task(
            kopf.operator(
                clusterwide=True,
                standalone=True,
                # Kopf's own default asks the password database for the user's name, and the
                # images run as a numeric uid that has no entry there (KeyError at start).
                identity=Identity(default_identity()),
                memo=memo,
                memories=NoObjectMemories(),
                liveness_endpoint=args.liveness,
                stop_flag=stopping,
                ready_flag=kopf_ready,
            )
        )
        if holding is None:
            await operator
            return
        lost = await first_of(holding, operator)
        if lost:
            metrics.LEADER.set(0)
            logger.critical("%s: exiting now, so that nothing reconciles without the Lease", lost)
            logging.shutdown()
            # Not a graceful stop: Kopf would run handlers, and so write, on its way out.
            os._exit(1)  # Kubernetes restarts the container, which comes back as a standby
        await operator  # Kopf stopped (a signal, or its own error, which is raised here)
    finally:
        metrics.LEADER.set(0)
        if elector is not None and elector.holder == elector.identity:
            await elector.release()
        if elector is not None:
            await elector.client.close()
        if runner is not None:
            await runner.cleanup()


def stop_on_signals(stopping: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)


async def first_of(
    work: Coroutine[Any, Any, T] | asyncio.Task[T], other: asyncio.Event | asyncio.Task[Any]
) -> T | None:
    """Await `work` unless `other` (an event set, a task finished) comes first: then cancel it."""
    task = work if isinstance(work, asyncio.Task) else asyncio.create_task(work)
    waiter = asyncio.create_task(other.wait()) if isinstance(other, asyncio.Event) else other
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        if waiter is not other:
            waiter.cancel()
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return None


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
        "--tenant-selector",
        default=os.environ.get("TENANTRY_TENANT_SELECTOR", ""),
        help="reconcile only the AgentTenants with these labels, a Kubernetes label selector such "
        "as 'shard=a' or '!canary', filtered by the API server (env TENANTRY_TENANT_SELECTOR; "
        "default: every tenant)",
    )
    run.add_argument(
        "--operator-namespace",
        default=os.environ.get("POD_NAMESPACE"),
        help="the operator's own namespace, never given to a tenant (env POD_NAMESPACE)",
    )
    run.add_argument(
        "--liveness",
        default=None,
        help="serve Kopf's liveness endpoint, e.g. http://0.0.0.0:8080/healthz; it starts with "
        "Kopf, so with --leader-election only on the leader: probe /healthz of --metrics-address",
    )
    run.add_argument(
        "--metrics-address",
        default=os.environ.get("TENANTRY_METRICS_ADDRESS", ""),
        help="serve Prometheus metrics on /metrics and a health check on /healthz at HOST:PORT, "
        "e.g. 0.0.0.0:9090 (env TENANTRY_METRICS_ADDRESS; default: off)",
    )
    election = run.add_argument_group(
        "leader election",
        "With several replicas, only the holder of the Lease tenantry-leader reconciles; the others "
        "wait and take over when it stops renewing. A leader that loses the Lease exits (status 1).",
    )
    election.add_argument(
        "--leader-election",
        type=boolean,
        nargs="?",
        const=True,
        metavar="true|false",
        default=os.environ.get("TENANTRY_LEADER_ELECTION", "false"),
        help="reconcile only while holding the leader Lease (env TENANTRY_LEADER_ELECTION; "
        "default: off)",
    )
    election.add_argument(
        "--leader-election-namespace",
        default=os.environ.get("TENANTRY_LEADER_ELECTION_NAMESPACE")
        or os.environ.get("POD_NAMESPACE")
        or "default",
        help="the namespace of the Lease (env TENANTRY_LEADER_ELECTION_NAMESPACE, else "
        "POD_NAMESPACE; default %(default)s)",
    )
    for flag, kind, fallback, help_text in (
        ("lease-duration", int, "15", "seconds a standby waits for an unrenewed Lease"),
        ("lease-renew-deadline", float, "10", "seconds the leader tries to renew before it exits"),
        ("lease-retry-period", float, "2", "seconds between tries to acquire or renew"),
    ):
        env = f"TENANTRY_{flag.upper().replace('-', '_')}"
        election.add_argument(
            f"--{flag}",
            type=kind,
            default=os.environ.get(env, fallback),
            help=f"{help_text} (env {env}; default %(default)s)",
        )
    run.add_argument("--log-level", default=os.environ.get("TENANTRY_LOG_LEVEL", "INFO"))
    run.set_defaults(handler=command_run)

    crd = commands.add_parser(
        "crd", help="print a CustomResourceDefinition: AgentTenant's, or AgentTenantTemplate's"
    )
    crd.add_argument(
        "resource", nargs="?", choices=sorted(CRDS), default="agenttenants", help="which one"
    )
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
    render_command.add_argument(
        "--templates",
        action="append",
        default=[],
        metavar="FILE",
        help="a YAML file of AgentTenantTemplates to render too (repeatable); their kinds must be "
        "allowed by --template-kinds, as on the cluster",
    )
    config_arguments(render_command)
    render_command.set_defaults(handler=command_render)

    audit = commands.add_parser(
        "audit",
        help="check tenants against the isolation invariants; exit 1 on any violation",
        description=(
            "For cluster admins and CI gates: checks each AgentTenant's namespace (owned, Pod Security "
            "restricted), its policies, quota and accounts against `tenantry render`, and that no "
            "Role, RoleBinding, ServiceAccount, Secret or workload exists that Tenantry did not "
            "render, no pod mounts a service-account token, the sandbox can read no credentials, "
            "and every pod's security context is compliant."
        ),
    )
    audit.add_argument("--tenant", help="audit only this AgentTenant")
    audit.add_argument("--json", action="store_true", help="print JSON instead of a table")
    config_arguments(audit)
    audit.set_defaults(handler=command_audit)
    return root


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main()

"""`python -m tenantry_runtime serve | sandbox | kinds`: the entrypoints of the two tenant pods,
and the list of the agent kinds installed in the image."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .refusals import ConfigError


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # autogen logs every message and model call, contents included, at INFO: tenant data
    # has no place in the pod's log (the audit log records what happened, without content).
    for name in ("autogen_core", "autogen_ext", "autogen_agentchat", "httpx", "mcp", "openai"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _write_termination_message(message: str) -> None:
    """Leave a refusal where Kubernetes reads a container's last words (the file named by
    TENANTRY_TERMINATION_MESSAGE_PATH, the pod's terminationMessagePath): the operator shows it
    on the tenant's status, so nobody has to read the pod's log to learn what to fix."""
    path = os.environ.get("TENANTRY_TERMINATION_MESSAGE_PATH")
    if not path:
        return
    try:
        with open(path, "w", encoding="utf-8") as file:
            file.write(message)
    except OSError as exc:  # the refusal is on stderr anyway
        print(f"tenantry_runtime: cannot write the termination message: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tenantry_runtime", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the tenant's agent runtime and its HTTP API")
    commands.add_parser("sandbox", help="run the tenant's code-execution server")
    commands.add_parser(
        "kinds",
        help="print the agent kinds installed in this image, with their config schemas (JSON)",
    )
    args = parser.parse_args(argv)
    _configure_logging()
    # Imported here so that each process loads only its own side: the runtime never loads
    # the sandbox's server or runner, the sandbox never autogen, the model client or
    # runtime.json (tests/runtime/test_entrypoints.py checks both; import-linter too).
    try:
        if args.command == "serve":
            from .serve_settings import load_secrets, load_serve_settings  # noqa: PLC0415
            from .server import serve  # noqa: PLC0415

            settings = load_serve_settings(os.environ)
            serve(settings, load_secrets(settings.config))
        elif args.command == "kinds":
            from . import agent_kinds  # noqa: PLC0415

            print(json.dumps(agent_kinds.describe(agent_kinds.installed()), indent=2))
        else:
            # The sandbox neither serves nor makes TLS, yet asyncio imports `ssl` (and with it
            # OpenSSL's libssl) when it loads: 1.4 MiB of the sandbox's idle memory
            # (bench/findings.md). Blocked here, before asyncio loads, in this process only;
            # asyncio goes without it as it does on a Python built without ssl. Unless a
            # bootstrap loaded it already (a test's): then it stays.
            # tests/runtime/test_sandbox_http.py::test_the_sandbox_process_never_loads_ssl_nor_aiohttp
            sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
            from .sandbox import serve_sandbox  # noqa: PLC0415
            from .sandbox_settings import load_sandbox_settings  # noqa: PLC0415

            serve_sandbox(load_sandbox_settings(os.environ))
    except ConfigError as exc:
        refusal = f"tenantry_runtime {args.command}: refusing to start: {exc}"
        print(refusal, file=sys.stderr)
        _write_termination_message(refusal)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

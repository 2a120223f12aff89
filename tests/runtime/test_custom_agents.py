"""A platform team's own agent kinds, as real processes: examples/custom-agents installed the way
its Dockerfile installs it, into a runtime image's virtualenv installed the way the runtime's
Dockerfile builds it, beside a second package of kinds (tests/runtime/packages/other-agents)."""

from __future__ import annotations

import http.client
import json
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from tenantry.cli import load_tenants
from tenantry.config import OperatorConfig
from tenantry.render import render

from tests.support.ports import free_port
from tests.support.runtime_image import (
    apply_derived_dockerfile,
    install_runtime_image,
    instructions_of,
)
from tests.support.runtime_services import (
    REPO,
    TENANT,
    Service,
    base_env,
    json_lines,
    start_service,
)

EXAMPLE = REPO / "examples" / "custom-agents"
OTHER = Path(__file__).parent / "packages" / "other-agents"
FAQ = {"opening hours": "Monday to Friday, 9 to 5.", "returns": "Within 30 days, with the receipt."}


@dataclass(frozen=True)
class Image:
    """The virtualenv of an image built FROM the runtime image with both packages in it."""

    python: str
    root: Path


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    root = tmp_path_factory.mktemp("acme-runtime-image")
    venv = root / "opt" / "venv"
    install = install_runtime_image(venv, root / "src" / "tenantry")
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    apply_derived_dockerfile(EXAMPLE / "Dockerfile", venv, root)
    python = str(venv / "bin" / "python")
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-deps", str(OTHER)],
        check=True,
        capture_output=True,
    )
    return Image(python, root)


def kinds(image: Image) -> dict[str, dict[str, Any]]:
    listed = subprocess.run(
        [image.python, "-m", "tenantry_runtime", "kinds"],
        env=base_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return {kind["kind"]: kind for kind in json.loads(listed.stdout)}


def runtime_json(agents: list[dict[str, Any]], secrets_dir: Path) -> dict[str, Any]:
    return {
        "tenant": TENANT,
        "topicTypes": sorted({agent["topicType"] for agent in agents}),
        "agents": agents,
        "model": None,
        "sandbox": None,
        "secretsDir": str(secrets_dir),
    }


FAQ_AGENT = {"name": "faq", "kind": "faq", "topicType": "faq", "config": {"secret": "faq-answers"}}
PROBER_AGENT = {"name": "prober", "kind": "prober", "topicType": "probe"}


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    answers = tmp_path / "secrets" / "faq-answers"
    answers.mkdir(parents=True)
    (answers / "answers.json").write_text(json.dumps(FAQ))
    return tmp_path / "secrets"


def serve_env(config: Path, **extra: str) -> dict[str, str]:
    return base_env(
        TENANTRY_TENANT=TENANT,
        TENANTRY_CONFIG=str(config),
        TENANTRY_HOST="127.0.0.1",
        TENANTRY_PORT=str(free_port()),
        **extra,
    )


@pytest.fixture
def runtime(image: Image, secrets_dir: Path, tmp_path: Path) -> Iterator[Service]:
    config = tmp_path / "runtime.json"
    config.write_text(json.dumps(runtime_json([FAQ_AGENT, PROBER_AGENT], secrets_dir)))
    marker = tmp_path / "echo-imported"
    service = start_service(
        "serve",
        serve_env(config, OTHER_AGENTS_IMPORTED=str(marker)),
        tmp_path / "logs",
        python=image.python,
        cwd=tmp_path,
    )
    service.extra["marker"] = marker
    yield service
    service.stop()


def post_task(service: Service, topic_type: str, content: str) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection(
        "127.0.0.1", int(service.url.rsplit(":", 1)[1]), timeout=30
    )
    try:
        body = json.dumps({"topicType": topic_type, "content": content})
        connection.request("POST", "/v1/tasks", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def refusal(image: Image, agents: list[dict[str, Any]], tmp_path: Path, secrets_dir: Path) -> str:
    config = tmp_path / "refused.json"
    config.write_text(json.dumps(runtime_json(agents, secrets_dir)))
    result = subprocess.run(
        [image.python, "-m", "tenantry_runtime", "serve"],
        env=serve_env(config),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def test_the_kinds_command_lists_every_installed_kind_with_its_config_schema(image: Image) -> None:
    found = kinds(image)
    assert set(found) == {"assistant", "coder", "faq", "echo", "prober", "team"}
    assert found["faq"]["package"] == "acme-agents"
    assert found["faq"]["entryPoint"] == "acme_agents:FAQ"
    assert found["faq"]["answersTasks"] is True
    schema = found["faq"]["configSchema"]
    assert schema["required"] == ["secret"] and schema["additionalProperties"] is False
    assert found["assistant"]["needsModel"] is True


def test_the_example_kind_answers_from_its_tenant_scoped_secret_through_an_audited_tool(
    runtime: Service,
) -> None:
    status, body = post_task(runtime, "faq", "  Opening   HOURS ")
    assert (status, body.get("result")) == (200, FAQ["opening hours"]), body
    status, body = post_task(runtime, "faq", "warranty")
    assert (status, body.get("result")) == (200, "I do not know that one yet."), body
    audit = json_lines(runtime.stdout)
    calls = [record for record in audit if record["event"] == "tool_call"]
    assert [(c["tool"], c["outcome"], c["tenant"]) for c in calls] == [
        ("faq.lookup", "ok", TENANT),
        ("faq.lookup", "ok", TENANT),
    ]
    assert all(len(c["argumentsSha256"]) == 64 and c["taskId"] for c in calls)
    # The question is the tenant's data: it is in no audit record, only its digest is.
    assert "opening" not in runtime.stdout.read_text().lower()


def test_a_kind_the_tenant_did_not_name_is_not_served_and_never_loaded(runtime: Service) -> None:
    status, body = post_task(runtime, "echo", "hello")
    assert status == 400 and "not served" in body["error"], body
    assert not runtime.extra["marker"].exists(), "other_agents.echo was imported"


def test_a_custom_agent_cannot_reach_another_tenant(runtime: Service) -> None:
    status, body = post_task(runtime, "probe", "go")
    assert (status, body.get("result")) == (
        200,
        "publish returned; send raised MessageDroppedException",
    ), body
    dropped = [
        record
        for record in json_lines(runtime.stdout)
        if record["event"] == "message" and record["decision"] == "dropped"
    ]
    assert {(r["kind"], r["messageType"]) for r in dropped} == {
        ("publish", "TaskRequest"),
        ("send", "TaskRequest"),
    }
    assert all(r["tenant"] == TENANT and r["reason"] for r in dropped)
    # The FAQ agent was never created for globex: nothing was delivered outside acme.
    delivered = [r for r in json_lines(runtime.stdout) if r.get("decision") == "delivered"]
    assert all("globex" not in json.dumps(r) for r in delivered)


def test_an_unknown_kind_is_refused_with_the_installed_kinds(
    image: Image, tmp_path: Path, secrets_dir: Path
) -> None:
    message = refusal(
        image, [{"name": "x", "kind": "search", "topicType": "t"}], tmp_path, secrets_dir
    )
    assert (
        "agent 'x': kind 'search' is not allowed; allowed kinds: assistant, coder, echo, faq, prober, team"
        in message
    )


def test_an_invalid_config_is_refused_in_the_kinds_own_words(
    image: Image, tmp_path: Path, secrets_dir: Path
) -> None:
    agent = {**FAQ_AGENT, "config": {"secrets": "faq-answers"}}
    message = refusal(image, [agent], tmp_path, secrets_dir)
    assert "agent 'faq'.config.secret: Field required" in message
    assert "agent 'faq'.config.secrets: Extra inputs are not permitted" in message


def test_a_config_naming_a_secret_that_is_not_mounted_is_refused(
    image: Image, tmp_path: Path, secrets_dir: Path
) -> None:
    agent = {**FAQ_AGENT, "config": {"secret": "globex-answers"}}
    message = refusal(image, [agent], tmp_path, secrets_dir)
    assert "agent 'faq': its config names Secret 'globex-answers', which is not mounted" in message


def test_the_example_tenant_is_answered_by_its_own_kind_as_rendered(
    image: Image, tmp_path: Path
) -> None:
    """examples/custom-agents/tenant.yaml, rendered as the operator renders it, served by the
    image its Dockerfile builds, with the FAQ its secret-source.yaml holds."""
    (tenant,) = load_tenants(str(EXAMPLE / "tenant.yaml"))
    config = OperatorConfig(allowed_images=("registry.example/acme/",))
    rendered = {(m["kind"], m["metadata"]["name"]): m for m in render(tenant, config)}
    runtime_config = json.loads(rendered[("ConfigMap", "runtime-config")]["data"]["runtime.json"])
    (source,) = [
        doc for doc in yaml.safe_load_all((EXAMPLE / "secret-source.yaml").read_text()) if doc
    ]
    faq = tmp_path / "secrets" / "faq-answers"
    faq.mkdir(parents=True)
    for key, value in source["stringData"].items():
        (faq / key).write_text(value)
    runtime_config["secretsDir"] = str(tmp_path / "secrets")  # where the pod mounts them
    (tmp_path / "runtime.json").write_text(json.dumps(runtime_config))
    env = serve_env(tmp_path / "runtime.json")
    env["TENANTRY_TENANT"] = tenant.name
    service = start_service("serve", env, tmp_path / "logs", python=image.python, cwd=tmp_path)
    try:
        status, body = post_task(service, "faq", "Returns")
        assert (status, body["topicType"], body["result"]) == (
            200,
            "faq",
            "Within 30 days, with the receipt.",
        )
        status, body = post_task(service, "faq", "parking")
        assert (status, body["result"]) == (200, "Please ask ACME support.")
    finally:
        service.stop()


def test_a_config_cannot_name_a_path_as_its_secret(
    image: Image, tmp_path: Path, secrets_dir: Path
) -> None:
    """Finding: `(secretsDir / name).is_dir()` alone let ".." or "/etc" through, handing the
    agent the sandbox token's directory or any directory of the pod."""
    for name in ("..", ".", "", "/etc", "../sandbox"):
        agent = {**FAQ_AGENT, "config": {"secret": name}}
        message = refusal(image, [agent], tmp_path, secrets_dir)
        assert "which is not the name of one of spec.secrets" in message, (name, message)


def test_a_refused_config_shows_its_field_names_escaped(
    image: Image, tmp_path: Path, secrets_dir: Path
) -> None:
    agent = {**FAQ_AGENT, "config": {"secret": "faq-answers", "\x1b[31mX\nfake: line": 1}}
    message = refusal(image, [agent], tmp_path, secrets_dir)
    assert "\x1b" not in message and "fake: line" not in message.splitlines()[-1][:20]
    assert "'\\x1b[31mX\\nfake: line'" in message


def test_a_kind_planted_in_the_working_directory_is_never_found(
    image: Image, tmp_path: Path
) -> None:
    """Finding: `python -m` puts the working directory (the pod's writable /tmp) first on
    sys.path, so a planted *.dist-info named a kind; the image's PYTHONSAFEPATH=1 stops it."""
    planted = tmp_path / "planted-1.0.dist-info"
    planted.mkdir()
    (planted / "METADATA").write_text("Metadata-Version: 2.1\nName: planted\nVersion: 1.0\n")
    (planted / "entry_points.txt").write_text("[tenantry.agent_kinds]\nplanted = planted:KIND\n")
    (tmp_path / "planted.py").write_text(
        "from tenantry_runtime.agent_kinds import AgentKind\n"
        "KIND = AgentKind(build=lambda context, config: None, description='planted')\n"
    )
    image_env = {
        key: value
        for line in instructions_of(REPO / "runtime_image" / "Dockerfile")
        if line.startswith("ENV ")
        for key, value in (pair.split("=", 1) for pair in shlex.split(line[4:]))
    }
    assert image_env.get("PYTHONSAFEPATH") == "1"

    def listed(env: dict[str, str]) -> set[str]:
        result = subprocess.run(
            [image.python, "-m", "tenantry_runtime", "kinds"],
            env=base_env(**env),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )
        return {line.split('"')[3] for line in result.stdout.splitlines() if '"kind":' in line}

    assert "planted" in listed({})  # the plant works where nothing stops it
    assert "planted" not in listed({"PYTHONSAFEPATH": image_env["PYTHONSAFEPATH"]})

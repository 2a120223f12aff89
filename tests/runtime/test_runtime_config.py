"""Parsing runtime.json and the env of both processes (pure units)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from tenantry_runtime.env import tenant_from_env
from tenantry_runtime.refusals import ConfigError
from tenantry_runtime.runtime_json import AGENT_KINDS, parse_runtime_config
from tenantry_runtime.sandbox_settings import SandboxLimits, load_sandbox_settings
from tenantry_runtime.serve_settings import load_secrets, load_serve_settings

from tests.support.runtime_services import REPO

A_DIRECTORY = str(REPO / "docs")


def contract_example() -> dict[str, Any]:
    """The runtime.json example of docs/runtime-contract.md, so the doc cannot drift."""
    doc = (REPO / "docs" / "runtime-contract.md").read_text()
    match = re.search(r"`runtime.json`:\n\n```json\n(.*?)```", doc, re.S)
    assert match, "docs/runtime-contract.md lost its runtime.json example"
    example: dict[str, Any] = json.loads(match.group(1))
    return example


def variant(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(contract_example())
    data.update(changes)
    return data


def refusal(data: object, tenant: str = "acme") -> str:
    with pytest.raises(ConfigError) as raised:
        parse_runtime_config(data, tenant)
    return str(raised.value)


def test_the_contract_example_parses() -> None:
    config = parse_runtime_config(contract_example(), "acme")
    assert config.tenant == "acme"
    assert config.topic_types == ("default",)
    assert [(a.name, a.kind, a.topic_type) for a in config.agents] == [
        ("assistant", "assistant", "default"),
        ("coder", "coder", "code"),
    ]
    assert config.agents[0].system_message == "You are a helpful assistant."
    assert config.model is not None
    assert config.model.api_key_file == Path(
        "/var/run/secrets/tenantry/secrets/model-credentials/api-key"
    )
    assert config.sandbox is not None
    assert config.sandbox.timeout_seconds == 30.0
    assert config.task_timeout_seconds == 120.0
    assert config.task_topic_types == {"default"}


def test_the_agents_the_operator_renders_parse() -> None:
    # Every agent comes with systemMessage, null when unset; a coder's is ignored.
    agents = [
        {"name": "helper", "kind": "assistant", "topicType": "default", "systemMessage": None},
        {"name": "runner", "kind": "coder", "topicType": "code", "systemMessage": None},
    ]
    config = parse_runtime_config(variant(agents=agents), "acme")
    assert [a.system_message for a in config.agents] == ["You are a helpful assistant."] * 2


def test_model_and_sandbox_may_be_null_without_agents_that_need_them() -> None:
    config = parse_runtime_config(variant(model=None, sandbox=None, agents=[]), "acme")
    assert (config.model, config.sandbox, config.agents) == (None, None, ())
    assert config.task_topic_types == frozenset()


def test_an_agent_kind_outside_the_allowlist_is_refused_naming_agent_and_kinds() -> None:
    data = variant()
    data["agents"].append(
        {"name": "tooling", "kind": "autogen_ext.tools.FunctionTool", "topicType": "t"}
    )
    message = refusal(data)
    assert "agent 'tooling'" in message
    assert "'autogen_ext.tools.FunctionTool' is not allowed" in message
    assert "allowed kinds: assistant, coder, team" in message
    assert AGENT_KINDS == ("assistant", "coder", "team")


def test_sessions_take_their_defaults() -> None:
    config = parse_runtime_config(variant(sessions={"dir": A_DIRECTORY}), "acme")
    assert config.sessions is not None
    assert (config.sessions.max_sessions, config.sessions.max_idle_days) == (1000, 30.0)
    assert config.sessions.max_session_bytes == 256 * 1024
    assert config.session_topic_types == {"default"}
    assert parse_runtime_config(contract_example(), "acme").session_topic_types == set()


def test_a_config_for_another_tenant_is_refused() -> None:
    message = refusal(contract_example(), tenant="globex")
    assert "'acme'" in message
    assert "TENANTRY_TENANT is 'globex'" in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"extra": 1}, "unknown field(s) extra"),
        ({"topicTypes": []}, "at least one topic type"),
        ({"topicTypes": ["tenantry.results"]}, "reserved"),
        ({"topicTypes": ["no spaces"]}, "not a valid topic type"),
        ({"taskTimeoutSeconds": 0}, "positive number"),
        ({"taskTimeoutSeconds": True}, "positive number"),
        ({"model": {"model": "m", "baseUrl": "ftp://x", "apiKeyFile": "/k"}}, "http(s) URL"),
        ({"model": None}, "agent 'assistant' of kind assistant needs a model"),
        ({"sandbox": None}, "agent 'coder' of kind coder needs a sandbox"),
        ({"sandbox": {"url": "http://s", "tokenFile": "/t", "x": 1}}, "sandbox: unknown"),
        ({"sessions": {"dir": "/nonexistent/sessions"}}, "sessions volume must be mounted"),
        ({"sessions": {"dir": "relative"}}, "is not a directory"),
        (
            {"sessions": {"dir": A_DIRECTORY, "maxSessions": 0}},
            "maxSessions must be a whole number",
        ),
        (
            {"sessions": {"dir": A_DIRECTORY, "maxSessions": 1.5}},
            "maxSessions must be a whole number",
        ),
        ({"sessions": {"dir": A_DIRECTORY, "maxSessionBytes": -1}}, "maxSessionBytes must be"),
        ({"sessions": {"dir": A_DIRECTORY, "maxIdleDays": 0}}, "positive number of days"),
        (
            {"sessions": {"dir": A_DIRECTORY, "retention": 1}},
            "sessions: unknown field(s) retention",
        ),
    ],
)
def test_invalid_top_level_fields_are_refused(change: dict[str, Any], expected: str) -> None:
    assert expected in refusal(variant(**change))


@pytest.mark.parametrize(
    ("agents", "expected"),
    [
        ([{"name": "a", "kind": "coder", "topicType": "x", "tools": []}], "unknown field(s) tools"),
        ([{"name": "a", "kind": "assistant", "topicType": "x", "systemMessage": 3}], "non-empty"),
        ([{"name": "a.b", "kind": "coder", "topicType": "x"}], "agent 'a.b'.name"),
        ([{"name": "a", "kind": "coder"}], "topicType must be a non-empty string"),
        (
            [
                {"name": "a", "kind": "coder", "topicType": "x"},
                {"name": "a", "kind": "assistant", "topicType": "y"},
            ],
            "declared twice",
        ),
        (
            [
                {"name": "a", "kind": "coder", "topicType": "x"},
                {"name": "b", "kind": "assistant", "topicType": "x"},
            ],
            "both subscribe to topic type 'x'",
        ),
        (
            [
                {"name": "a", "kind": "coder", "topicType": "x"},
                {"name": "b", "kind": "coder", "topicType": "y"},
            ],
            "at most one agent of kind coder",
        ),
        (["assistant"], "kind None is not allowed"),
    ],
)
def test_invalid_agents_are_refused(agents: list[Any], expected: str) -> None:
    assert expected in refusal(variant(agents=agents))


# What a rule means, in words: a refusal never shows the regular expression behind it.
AGENT_NAME_WORDS = (
    "is not an agent name: letters, digits, '-' and '_', starting with a letter or digit, "
    "at most 63 characters"
)
TOPIC_TYPE_WORDS = (
    "is not a valid topic type: letters, digits, '-', '_' and '.', starting with a letter or "
    "digit, at most 63 characters"
)
# The operator's words for the same rule (tenantry.models.PATTERN_MEANINGS), and its length.
DNS_LABEL_WORDS = (
    "is not a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a "
    "letter or digit, at most 63 characters"
)


@pytest.mark.parametrize(
    ("agents", "topic_types", "expected"),
    [
        (
            [{"name": "ev.il", "kind": "coder", "topicType": "code"}],
            ["default"],
            f"agent 'ev.il'.name='ev.il' {AGENT_NAME_WORDS}",
        ),
        (
            [{"name": "a", "kind": "coder", "topicType": "no:colons"}],
            ["default"],
            f"agent 'a'.topicType='no:colons' {TOPIC_TYPE_WORDS}",
        ),
        ([], ["default", "no spaces"], f"topicTypes[1]='no spaces' {TOPIC_TYPE_WORDS}"),
        ([], ["default", 7], f"topicTypes[1]=7 {TOPIC_TYPE_WORDS}"),
    ],
)
def test_a_value_breaking_its_pattern_is_refused_in_words(
    agents: list[Any], topic_types: list[Any], expected: str
) -> None:
    message = refusal(variant(agents=agents, topicTypes=topic_types))
    assert message == expected
    assert "[A-Za-z0-9]" not in message


def test_a_tenant_that_is_no_dns_label_is_refused_in_the_operators_words() -> None:
    with pytest.raises(ConfigError) as raised:
        tenant_from_env({"TENANTRY_TENANT": "Acme_Corp"})
    assert str(raised.value) == f"TENANTRY_TENANT='Acme_Corp' {DNS_LABEL_WORDS}"


def test_a_hostile_agent_name_is_refused_on_one_short_line() -> None:
    hostile = "x\nERROR: forged log line\x1b[31m" + "y" * 100_000
    message = refusal(variant(agents=[{"name": hostile, "kind": "coder", "topicType": "t"}]))
    assert "\n" not in message and "\x1b" not in message
    assert len(message) < 400
    assert message.startswith("agent 'x\\nERROR: forged log line\\x1b[31myyy")
    assert message.endswith(AGENT_NAME_WORDS)


def test_a_hostile_unknown_field_is_refused_on_one_line() -> None:
    message = refusal(variant(**{"x\nERROR: forged": 1, "extra": 2}))
    assert "\n" not in message
    assert "unknown field(s) extra, 'x\\nERROR: forged'; allowed: " in message


def test_a_missing_tenant_is_refused_naming_the_variable() -> None:
    for env in ({}, {"TENANTRY_TENANT": "  "}):
        with pytest.raises(ConfigError, match="TENANTRY_TENANT is not set"):
            tenant_from_env(env)
    with pytest.raises(ConfigError, match="not a DNS-1123 label"):
        tenant_from_env({"TENANTRY_TENANT": "Acme_Corp"})


def test_serve_settings_come_from_the_contract_env(tmp_path: Path) -> None:
    config_file = tmp_path / "runtime.json"
    config_file.write_text(json.dumps(contract_example()))
    env = {"TENANTRY_TENANT": "acme", "TENANTRY_CONFIG": str(config_file)}
    settings = load_serve_settings(env)
    assert (settings.audit_target, settings.port, settings.host) == ("-", 8080, None)
    assert settings.max_tasks_in_flight == 64
    env |= {
        "TENANTRY_AUDIT_LOG": "/var/log/audit.jsonl",
        "TENANTRY_PORT": "9000",
        "TENANTRY_MAX_TASKS_IN_FLIGHT": "5",
    }
    settings = load_serve_settings(env)
    assert (settings.audit_target, settings.port) == ("/var/log/audit.jsonl", 9000)
    assert settings.max_tasks_in_flight == 5
    with pytest.raises(ConfigError, match="TENANTRY_PORT='http' is not a TCP port"):
        load_serve_settings(env | {"TENANTRY_PORT": "http"})
    with pytest.raises(ConfigError, match="TENANTRY_MAX_TASKS_IN_FLIGHT='0' must be a positive"):
        load_serve_settings(env | {"TENANTRY_MAX_TASKS_IN_FLIGHT": "0"})
    config_file.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_serve_settings(env)


def test_secrets_are_read_from_the_files_the_config_names(tmp_path: Path) -> None:
    key, token = tmp_path / "api-key", tmp_path / "token"
    data = variant()
    data["model"]["apiKeyFile"] = str(key)
    data["sandbox"]["tokenFile"] = str(token)
    config = parse_runtime_config(data, "acme")
    with pytest.raises(ConfigError, match=r"model.apiKeyFile .*api-key: cannot read it"):
        load_secrets(config)
    key.write_text("sk-test\n")
    token.write_text("\n")
    with pytest.raises(ConfigError, match=r"sandbox.tokenFile .*token is empty"):
        load_secrets(config)
    token.write_text("tok")
    secrets = load_secrets(config)
    assert (secrets.model_api_key, secrets.sandbox_token) == ("sk-test", "tok")
    assert "sk-test" not in repr(secrets)


def test_sandbox_settings_defaults_and_overrides(tmp_path: Path) -> None:
    env = {
        "TENANTRY_TENANT": "acme",
        "TENANTRY_SANDBOX_TOKEN": " tok\n",
        "TENANTRY_SANDBOX_WORKDIR": str(tmp_path),
    }
    settings = load_sandbox_settings(env)
    assert settings.limits == SandboxLimits()
    assert settings.limits.timeout_seconds == 30
    assert (settings.token, settings.workdir, settings.port) == ("tok", tmp_path, 8080)
    assert "tok" not in repr(settings)
    settings = load_sandbox_settings(
        env | {"TENANTRY_SANDBOX_TIMEOUT_SECONDS": "2.5", "TENANTRY_SANDBOX_MEMORY_MB": "128"}
    )
    assert settings.limits.timeout_seconds == 2.5
    assert settings.limits.memory_bytes == 128 * 2**20
    assert settings.keep_workspace is False
    assert load_sandbox_settings(env | {"TENANTRY_SANDBOX_KEEP_WORKSPACE": "true"}).keep_workspace
    with pytest.raises(ConfigError, match="TENANTRY_SANDBOX_KEEP_WORKSPACE='yes' must be true or"):
        load_sandbox_settings(env | {"TENANTRY_SANDBOX_KEEP_WORKSPACE": "yes"})
    assert settings.wipe_ipc is True
    assert not load_sandbox_settings(env | {"TENANTRY_SANDBOX_WIPE_IPC": "false"}).wipe_ipc
    for name, value in [
        ("TENANTRY_SANDBOX_TIMEOUT_SECONDS", "-1"),
        ("TENANTRY_SANDBOX_TIMEOUT_SECONDS", "nan"),
        ("TENANTRY_SANDBOX_CONCURRENCY", "0"),
    ]:
        with pytest.raises(ConfigError, match=name):
            load_sandbox_settings(env | {name: value})
    with pytest.raises(ConfigError, match="TENANTRY_SANDBOX_TOKEN is not set"):
        load_sandbox_settings({"TENANTRY_TENANT": "acme"})
    with pytest.raises(ConfigError, match="TENANTRY_SANDBOX_TOKEN is not set"):
        load_sandbox_settings(env | {"TENANTRY_SANDBOX_TOKEN": " "})
    # A token in a file is refused, not read: code the sandbox runs could read the file too.
    token = tmp_path / "token"
    token.write_text("tok")
    with pytest.raises(ConfigError, match="TENANTRY_SANDBOX_TOKEN_FILE is not read any more"):
        load_sandbox_settings(env | {"TENANTRY_SANDBOX_TOKEN_FILE": str(token)})
    with pytest.raises(ConfigError, match="not a directory"):
        load_sandbox_settings(env | {"TENANTRY_SANDBOX_WORKDIR": str(token)})

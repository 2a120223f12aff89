"""The per-tenant AutoGen runtime and the sandbox code-executor server."""

__version__ = "0.1.0"

"""Tenantry: a Kubernetes operator that gives each tenant of an agentic application an isolated runtime."""

__version__ = "0.1.0"

"""Agent kinds for tests only (see pyproject.toml): each in a module of its own, so that a
kind's module is imported only when a tenant names that kind."""

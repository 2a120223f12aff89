"""What the test suites and the benchmarks (bench/) share, imported as `tests.support.<module>`.

- ports: free loopback ports;
- processes: stopping a child process (SIGTERM, then SIGKILL);
- examples: the AgentTenants of examples/, loaded from their files;
- scripted_model: the scripted OpenAI-compatible model (its reply shape is e2e/model_server.py's);
- runtime_services: `python -m tenantry_runtime serve | sandbox` as real processes;
- chartkit: the chart's tools and rendering; tally: the counts the run reports at the end.

The repository root is on sys.path: pytest puts it there (`pythonpath` in pyproject.toml), and
`python -m bench` runs from it.
"""

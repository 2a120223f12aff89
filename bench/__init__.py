"""Benchmarks of Tenantry on the local control plane (`make bench`); see docs/benchmarks.md."""

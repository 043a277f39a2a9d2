"""Benchmarks, run by hand (not in CI): `run` for a reconcile at scale, `coldstart` for imports."""

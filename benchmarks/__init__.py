"""Benchmark harness for workerd against RQ; see benchmarks/README.md and docs/PERFORMANCE.md.

This package is importable from the repository root (``benchmarks.jobs``, ``benchmarks.jobs_heavy``,
``benchmarks.jobs_bigmem``) so that both RQ and workerd resolve the same job functions by name. It must
stay empty: every job module imports it first, and any cost here would be counted in every job.
"""

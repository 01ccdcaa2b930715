"""Benchmark suites for asymgrpo_kernels (run with ``pytest benchmarks/``; see benchmarks/README.md)."""

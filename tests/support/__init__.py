"""Helpers shared by the test suite and the benchmarks (real servers they start and stop themselves)."""

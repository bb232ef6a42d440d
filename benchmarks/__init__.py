"""Benchmarks run by `make bench` (not tests: they measure, they do not assert)."""

"""Benchmarks: each writes bench/results/AREA.json and is recorded in BENCHMARKS.md."""

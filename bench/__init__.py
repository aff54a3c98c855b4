"""Benchmark harness for Opta-LMX: see bench/README.md."""

"""Benchmark harness for Opta-LMX (issue 5): see bench/README.md."""

"""Benchmarks: measurements of the pipeline on loopback sites, run as `python -m bench.<name>`."""

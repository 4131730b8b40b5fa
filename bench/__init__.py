"""Benchmarks of serve-http: ``.venv/bin/python bench/run.py --help``."""

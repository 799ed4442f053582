"""Benchmarks on loopback: the relay side by side with Postfix and Python's ceilings.

Run with `python -m bench` (see bench/README.md).
"""

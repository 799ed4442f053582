"""Benchmarks on loopback: the relay side by side with Postfix and Python's ceilings.

Run with `python -m bench` (see bench/README.md).

Every bench measures the relay as installed: `pip install .` compiles each module to
bytecode, so a checkout's modules are compiled here first. Without this, a checkout run with
PYTHONDONTWRITEBYTECODE set compiles every module again at every process start (0.1 s and more
before a child process's first SMTP reply).
"""

import compileall
from pathlib import Path

for _package in ("relay", "tui"):
    compileall.compile_dir(Path(__file__).resolve().parent.parent / _package, quiet=1)

"""Benchmarks: scripts that print figures, run as ``python -m bench.<name>``; never run as tests.

`bench.harness` holds what they share with the tests (scratch databases, free ports, child processes,
results stamped with their date, commit and command); raw results are kept in ``bench/results/``.
"""

"""Benchmarks of sleepnas: scripts that print figures beside a reference measured in the same run.

Each ``bench_*.py`` runs on its own (``python benchmarks/bench_score.py --help``);
``python -m benchmarks`` runs them all in turn.
"""

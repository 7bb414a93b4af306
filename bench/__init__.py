"""Benchmarks (not in CI): ``make bench`` / ``make bench-quick`` run ``python -m bench``; see bench/README.md."""

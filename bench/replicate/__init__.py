"""Recursion versus depth at laptop scale: `python -m bench.replicate` (see the README's section and
config/replicate/study.yaml)."""

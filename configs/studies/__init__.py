"""Comparison studies: several networks under one protocol (agmr_jax/study.py; docs/studies.md)."""

"""Launchers: local multi-process, SLURM, Kubernetes, TPU VM, and sweeps."""

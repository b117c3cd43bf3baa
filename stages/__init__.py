"""The DVC stages: one short script each, run from the repository root as ``python -m stages.<name>``."""

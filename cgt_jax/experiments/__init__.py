"""Experiments built on the training job (method comparisons)."""

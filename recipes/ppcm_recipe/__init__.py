"""Helpers of the accelerate training recipe (``recipes/train.py``): config, data, evaluation."""

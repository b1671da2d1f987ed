"""Evaluation: domain classifiers and sample-quality checks."""

"""Evaluation: FID, KID and precision/recall on pretrained features (offline), domain classifiers, and
sample-quality checks."""

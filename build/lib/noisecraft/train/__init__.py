"""Training: the loop, EMA weights and checkpoints."""

"""Training: the epoch loop with CML's three-step meta update, and checkpoints."""

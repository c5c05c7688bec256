"""CML's parts: graph encoder, losses, meta weight network, and the baselines."""

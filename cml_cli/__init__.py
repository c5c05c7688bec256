"""cml: contrastive meta learning for multi-behavior recommendation, on PyTorch Geometric."""

__version__ = "0.1.0"

"""cml: contrastive meta learning for multi-behavior recommendation, on PyTorch Geometric."""

import os as _os

__version__ = "0.1.0"

# OpenMP threads wait passively unless the environment says otherwise (see cml_cli.threads): set
# here too, so that Python API users who import cml_cli before torch get it, not only the CLI.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

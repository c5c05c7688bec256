"""``cml tune``: hyperparameter search on Optuna with the strict protocol (see
:mod:`cml_cli.tune.study`), over search spaces read from TOML (:mod:`cml_cli.tune.space`).
Optuna is an optional dependency (``pip install 'cml-cli[tune]'``), imported only here."""

from cml_cli.tune.space import Param, default_space_file, load_space, parse_space
from cml_cli.tune.study import TuneOptions, run_tune

__all__ = ["Param", "TuneOptions", "default_space_file", "load_space", "parse_space", "run_tune"]

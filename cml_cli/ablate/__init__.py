"""``cml ablate``: a registry of variants (named config changes) and a resumable grid runner.

Every (variant, seed) is an ordinary run directory ``<runs-dir>/<name>/<variant>-s<seed>/``
(``/`` in a variant name becomes ``-``: ``w/o-clf`` -> ``w-o-clf-s0``) with its log beside it
(``<variant>-s<seed>.log``). Finished runs (``metrics.json`` present, same configuration) are
reused, interrupted ones resumed, so running the same command again only does what is missing.
Variants whose resolved configuration is identical (``first-order`` is ``cml`` when the preset
already uses first-order meta-gradients) share their runs.

Executors: ``local`` runs ``jobs`` runs side by side (in this process when ``jobs == 1``,
otherwise one ``python -m cml_cli.ablate`` subprocess per run with ``cores // jobs`` torch
threads each); ``ray`` sends each run to a Ray cluster (optional extra ``[ray]``).

``<runs-dir>/<name>/grid.json`` records the variants and runs of the grid (the union over
invocations); ``table.csv``, ``table.md`` and ``table.json`` hold the comparison table
(see :mod:`cml_cli.report`). This package imports torch only inside the runs themselves.

The parts: :mod:`cml_cli.ablate.registry` (variants), :mod:`cml_cli.ablate.grid` (planning and
:func:`run_grid`), :mod:`cml_cli.ablate.executors` (running the runs).
"""

from cml_cli.ablate.executors import EXECUTORS, LogProgress, _cores, run_one
from cml_cli.ablate.grid import Event, Unit, build_config, dir_name, parse_seeds, plan, run_grid
from cml_cli.ablate.registry import (
    BASELINE_SETTINGS,
    BASELINES,
    REFERENCE,
    Variant,
    baselines_available,
    builtin_variants,
    load_variants_file,
    registry,
    select_variants,
)

__all__ = [
    "BASELINES", "BASELINE_SETTINGS", "EXECUTORS", "REFERENCE", "Event", "LogProgress", "Unit", "Variant", "_cores",
    "baselines_available", "build_config", "builtin_variants", "dir_name", "load_variants_file", "parse_seeds", "plan",
    "registry", "run_grid", "run_one", "select_variants",
]

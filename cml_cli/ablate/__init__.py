"""``cml ablate``: a registry of variants (named config changes) and a resumable grid runner.

Every (variant, seed) is an ordinary run directory ``<runs-dir>/<name>/<variant>-s<seed>/``
(``/`` in a variant name becomes ``-``: ``w/o-clf`` -> ``w-o-clf-s0``) with its log beside it
(``<variant>-s<seed>.log``); :mod:`cml_cli.layout` defines these names and ``grid.json``.
Finished runs (``metrics.json`` present, same configuration) are reused, interrupted ones
resumed, so running the same command again only does what is missing.
Variants whose resolved configuration is identical (``first-order`` is ``cml`` when the preset
already uses first-order meta-gradients) share their runs.

Executors: ``local`` runs ``jobs`` runs side by side (in this process when ``jobs == 1``,
otherwise one ``python -m cml_cli.ablate`` subprocess per run with ``cores // jobs`` torch
threads each); ``ray`` sends each run to a Ray cluster (optional extra ``[ray]``).

``<runs-dir>/<name>/grid.json`` records the variants (with their kind) and runs of the grid
(the union over invocations). This package imports torch only inside the runs themselves.

The parts: :mod:`cml_cli.ablate.registry` (variants), :mod:`cml_cli.ablate.grid` (planning,
bookkeeping and :func:`run_grid`), :mod:`cml_cli.ablate.executors` (running the runs). The
comparison tables are built by :mod:`cml_cli.report` from the files a grid writes; neither
package imports the other.
"""

from cml_cli.ablate.executors import EXECUTORS, run_one, usable_cores
from cml_cli.ablate.grid import Event, Execution, GridOptions, Unit, build_config, parse_seeds, plan, run_grid
from cml_cli.ablate.registry import Variant, builtin_variants, load_variants_file, registry, select_variants

__all__ = [
    "EXECUTORS", "Event", "Execution", "GridOptions", "Unit", "Variant", "build_config", "builtin_variants", "load_variants_file",
    "parse_seeds", "plan", "registry", "run_grid", "run_one", "select_variants", "usable_cores",
]

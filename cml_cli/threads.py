"""How many threads a ``cml`` process uses, and how its OpenMP threads wait.

A process uses ``CML_THREADS`` threads when that is set (default: every core it may run on),
and the workers of ``--jobs N`` share that budget: ``max(1, budget // N)`` each. The count
goes to OpenMP and MKL (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, hence torch's intra-op
threads), to numpy's OpenBLAS (``OPENBLAS_NUM_THREADS``) and, in ``--jobs`` workers, to
torch's inter-op pool as well (training never starts that pool; a worker sets it anyway).

OpenMP threads wait passively (``OMP_WAIT_POLICY=PASSIVE``) unless the environment says
otherwise: a thread that finishes its share of an operation sleeps instead of spinning
while it waits for the others. With spinning threads, ``cml`` processes sharing cores with
other busy processes take the cores from each other's laggards: on a loaded 2-core machine
a retailrocket epoch took 7-8x longer (``benchmarks/bench_threads.py``).

Thread counts and waiting are not hyperparameters and not part of a run's configuration.
The thread count can change the last bits of floating-point sums: compare metrics at the
same count.
"""

from __future__ import annotations

import os

from cml_cli.errors import InputError

ENV = "CML_THREADS"
_POOL_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def budget() -> int:
    """``$CML_THREADS`` (a positive integer) or, unset or empty, :func:`cores`."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return cores()
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise InputError(f"{ENV}: expected a positive number of threads, got '{text}'")
    return value


def per_worker(jobs: int) -> int:
    """Threads of each of ``jobs`` workers sharing this process's budget."""
    return max(1, budget() // max(1, jobs))


def environment(threads: int | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default ``os.environ``) with the thread variables for ``threads`` threads
    (``None``: counts left as they are) and passive OpenMP waiting unless ``base`` sets it."""
    env = dict(os.environ if base is None else base)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if threads is not None:
        env[ENV] = str(threads)
        env.update({var: str(threads) for var in _POOL_VARS})
    return env


def prepare() -> None:
    """Set this process's thread variables from ``$CML_THREADS``; call it before numpy or
    torch is imported (OpenMP and OpenBLAS read them once, when they load)."""
    threads = budget() if os.environ.get(ENV, "").strip() else None
    os.environ.update(environment(threads))


def apply_torch(threads: int) -> None:
    """Give torch ``threads`` intra-op threads and, while it is still possible (before any
    inter-op work), as many inter-op threads."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already set or already used: torch allows it once
        pass

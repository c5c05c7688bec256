"""Worker processes die with the command that started them.

``cml ablate --jobs N`` and ``cml tune --jobs N`` run their work in child processes. A child
that outlived a parent killed with ``kill -9`` would keep training and keep its run
directory locked, so an immediate rerun could not resume that run. The parent starts each
child with :func:`child_env`; the child calls :func:`die_with_parent` first. On Linux the
kernel then sends the child SIGKILL when the parent ends (``prctl(PR_SET_PDEATHSIG)``); a
thread that compares ``getppid()`` with the parent's pid once a second covers other systems,
and a parent that was gone before the call is noticed at once. Checkpoints are written
atomically, so a child killed this way leaves its run resumable.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PARENT_ENV = "CML_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def child_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a child of this process (it names this process as the child's parent)."""
    return {**env, PARENT_ENV: str(os.getpid())}


def die_with_parent() -> None:
    """End this process as soon as the parent named in ``$CML_PARENT_PID`` ends (nothing
    happens without that variable: the process was not started as a worker)."""
    try:
        parent = int(os.environ.get(PARENT_ENV, ""))
    except ValueError:
        return
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watcher below still notices
    if os.getppid() != parent:  # the parent ended before the kernel was told
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=_watch, args=(parent,), name="cml-lifeline", daemon=True).start()


def _watch(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

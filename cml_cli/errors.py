"""Errors that the command line turns into one line on stderr and an exit code, and the
"did you mean" hint that messages about unknown names carry."""

from __future__ import annotations

import difflib
import errno
import re
from collections.abc import Iterable


class CMLError(Exception):
    """Base class; ``exit_code`` is what the ``cml`` command exits with, ``label`` the word
    its one line starts with."""

    exit_code = 1
    label = "error"


class InputError(CMLError):
    """Bad input or bad usage: a missing or malformed file, a bad option (exit code 2)."""

    exit_code = 2


class RunError(CMLError):
    """A failure while running, such as a diverging loss (exit code 1)."""

    exit_code = 1


class NonFiniteLoss(RunError):
    """The loss became NaN or infinite."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped a long command; ``str(e)`` says what was interrupted, what was
    kept and how to resume. A ``KeyboardInterrupt``, so ``except Exception`` never swallows it."""


class InterruptExit(CMLError):
    """What the command line makes of an :class:`Interrupted` (exit code 130)."""

    exit_code = 130
    label = "interrupted"


# Errors of a write that no retry fixes: the place is read-only or not ours (exit 2) or the
# disk is full (exit 1, a failure while running).
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def write_error(path, e: OSError) -> CMLError:
    """One clear error for an :class:`OSError` raised while writing ``path``."""
    why = e.strerror or str(e)
    if e.errno in _NOT_WRITABLE:
        return InputError(f"{path}: cannot write ({why})")
    if e.errno in _NO_SPACE:
        return RunError(f"{path}: cannot write ({why}); nothing half-written was left")
    return RunError(f"{path}: cannot write ({why})")


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s]*@")


def redact(text: str) -> str:
    """``text`` with the credentials of every URL in it removed:
    ``postgresql://user:secret@host/db`` -> ``postgresql://host/db``."""
    return _USERINFO.sub(r"\g<scheme>", str(text))


def close_names(word: str, known: Iterable[str], n: int = 3) -> list[str]:
    """The names of ``known`` close to ``word``, closest first (``difflib.get_close_matches``)."""
    return difflib.get_close_matches(str(word), [str(k) for k in known], n=n, cutoff=0.6)


def did_you_mean(word: str, known: Iterable[str], n: int = 3) -> str:
    """``" (did you mean 'a' or 'b'?)"`` for the names of ``known`` close to ``word``, or ``""``
    when none is."""
    close = close_names(word, known, n)
    return " (did you mean " + " or ".join(f"'{c}'" for c in close) + "?)" if close else ""

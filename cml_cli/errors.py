"""Errors that the command line turns into one line on stderr and an exit code."""


class CMLError(Exception):
    """Base class; ``exit_code`` is what the ``cml`` command exits with."""

    exit_code = 1


class InputError(CMLError):
    """Bad input or bad usage: a missing or malformed file, a bad option (exit code 2)."""

    exit_code = 2


class RunError(CMLError):
    """A failure while running, such as a diverging loss (exit code 1)."""

    exit_code = 1


class NonFiniteLoss(RunError):
    """The loss became NaN or infinite."""

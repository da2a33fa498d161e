"""Errors that the command line reports as the user's input, not as its own failure."""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad input data found while a command runs (a dataset image that fails to decode, say):
    ``detops`` prints its message on one line and exits 2, as for a usage error. It is a
    ``ValueError``, so library callers catch it as one."""

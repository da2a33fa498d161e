"""A cache for the small constant tensors that ops build from Python values."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch

F = TypeVar("F", bound=Callable)


def cached_constant(maxsize: int) -> Callable[[F], F]:
    """``functools.lru_cache(maxsize)`` (thread-safe), bypassed while torch.compile traces.

    Dynamo warns on every call of an lru_cache-wrapped function and would bake the cached
    tensor into the graph; tracing the plain function instead makes the constant part of
    the graph. The cached tensors are never modified in place by their callers.
    """

    def decorate(fn: F) -> F:
        cached = functools.lru_cache(maxsize=maxsize)(fn)

        @functools.wraps(fn)
        def call(*args):
            if torch.compiler.is_compiling():
                return fn(*args)
            return cached(*args)

        return call  # type: ignore[return-value]

    return decorate

"""The model registry: every network is built through ``create_model(name, **kw)``.

A family module decorates its builder functions with :func:`register_model`; the name is the
function's own, so no name is typed twice. This module imports no family (``medsight.models``
lists them), so a family can import it without a cycle.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from medsight.errors import ConfigError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    name = fn.__name__
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} registered twice")
    _REGISTRY[name] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, **kwargs) -> nn.Module:
    if name not in _REGISTRY:
        raise ConfigError(f"model.name: unknown model {name!r}; known: {', '.join(list_models())}")
    try:
        return _REGISTRY[name](**kwargs)
    except TypeError as exc:  # an option the builder does not take
        raise ConfigError(f"model.options for {name!r}: {exc}") from None

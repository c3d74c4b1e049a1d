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


def _builder(name: str) -> Callable[..., nn.Module]:
    if name not in _REGISTRY:
        raise ConfigError(f"model.name: unknown model {name!r}; known: {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(name: str, **kwargs) -> nn.Module:
    builder = _builder(name)
    try:
        return builder(**kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:  # an option it does not take, or a bad value
        raise ConfigError(f"model.options for {name!r}: {exc}") from None


def check_model(name: str, options: dict) -> None:
    """Refuse (ConfigError) an unknown model name or an option its builder does not take, before
    any data is read: the model is built with its default channels and classes on the meta device
    (no memory, no initialisation cost). A value that only the real input can judge is left to
    the real build."""
    import torch

    builder = _builder(name)
    try:
        with torch.device("meta"):
            builder(**options)
    except TypeError as exc:
        raise ConfigError(f"model.options for {name!r}: {exc}") from None
    except Exception:  # noqa: BLE001 - the defaults may not suit these options; the real build judges
        pass

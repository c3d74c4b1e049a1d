"""The reference libraries some tests compare medsight with (pyradiomics, Triton, VLFeat through
cyvlfeat). On a user's machine a missing one skips its comparisons with a message; in CI
(``CI=true``, as .ci/run and most CI services set it) it fails them, so that a comparison that
was meant to run cannot pass by not running."""

from __future__ import annotations

import importlib
import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require(module: str, reason: str):
    """``module`` imported, or a skip naming ``reason`` (a failure in CI)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if in_ci():
            pytest.fail(f"{reason} ({exc}); CI must install it", pytrace=False)
        pytest.skip(reason)

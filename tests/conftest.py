"""Shared fixtures: an isolated cache for the embedded dataset, built once per test session."""

import os

import pytest


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory):
    cache = tmp_path_factory.mktemp("gnp-cache")
    os.environ["GNP_CACHE"] = str(cache)  # child processes (DDP, Ray workers) inherit it
    from gnp.data import ensure_digits

    return ensure_digits()

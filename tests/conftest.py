"""Shared fixtures: an isolated cache for the embedded dataset, built once per test session."""

import os

import pytest

# Ray reads these once, at import, so they are set here, before any test module imports it. Loopback:
# Ray on Linux gives a node its network address; with this the test head and this process's ray.init both
# use 127.0.0.1. Token auth, as `ray start` enforces it (the token itself: tests/test_ray.py's cluster).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_AUTH_MODE"] = "token"


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory):
    cache = tmp_path_factory.mktemp("gnp-cache")
    os.environ["GNP_CACHE"] = str(cache)  # child processes (DDP, Ray workers) inherit it
    from gnp.folders import ensure_digits

    return ensure_digits()

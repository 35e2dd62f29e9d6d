import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402


@pytest.fixture
def custom_norm():
    """Registers a custom normalization for one test, removed afterwards."""
    import normopt

    registered = []

    def register(name, fn, **kwargs):
        normopt.register_normalization(name, fn, **kwargs)
        registered.append(name)

    yield register
    for name in registered:
        normopt.unregister_normalization(name)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: exhaustive sweeps, run with --runslow"
    )


def pytest_addoption(parser):
    parser.addoption(
        "--runslow", action="store_true", help="run tests marked slow"
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow sweep; run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)

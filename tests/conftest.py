import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# Property tests: "ci" keeps CI to a couple of minutes and draws the same
# examples every run (a red CI is then reproducible); run deeper, with fresh
# random draws, with pytest --hypothesis-profile=long.
settings.register_profile(
    "ci",
    max_examples=25,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long",
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("ci")


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

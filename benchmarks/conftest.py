"""pytest-benchmark suite over the `normopt bench` cases (run on demand).

    pytest benchmarks                          everything
    pytest benchmarks -k "l2 and fused_op"     a selection
    pytest benchmarks --benchmark-json out.json

Not part of the default `pytest` run (pytest.ini has testpaths = tests).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

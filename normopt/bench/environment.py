"""Machine and library versions recorded with every benchmark run."""

import datetime
import os
import platform

from normopt.info import package_version


def cpu_model():
    """The CPU model name from /proc/cpuinfo (Linux), else platform's guess."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def gpu_names():
    """Names of the GPUs TensorFlow sees (empty without one)."""
    import tensorflow as tf

    return [g.name for g in tf.config.list_physical_devices("GPU")]


def collect():
    """A JSON-ready dict: date, machine, versions, op library status."""
    import keras
    import numpy as np
    import tensorflow as tf

    import normopt
    from normopt.ops import library_status

    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        # Other work on a shared machine shows here; compare ratios, not times.
        "load_average_1_5_15_min": load_average(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "normopt": normopt.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.version(),
        "numpy": np.__version__,
        "numba": package_version("numba"),
        "cupy": package_version("cupy"),
        "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "gpus": gpu_names(),
        "op_library": library_status(),
    }

"""Build of normopt: the Python package plus the optional compiled op library.

The op library (`normopt/ops/_normopt_ops*.so`) is built by CMake against the
TensorFlow that is already installed (flags from `tf.sysconfig`), so install
with `pip install --no-build-isolation .` after TensorFlow. A failed or
impossible build never fails the install: the wrappers then run on pure
TensorFlow and `normopt info` says why the library did not load.
"""

import os
import shutil
import subprocess
import sys
import sysconfig

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext


class CMakeExtension(Extension):
    def __init__(self, name, source_dir="."):
        super().__init__(name, sources=[])
        self.source_dir = os.path.abspath(source_dir)


class OptionalCMakeBuild(build_ext):
    """Runs CMake for each extension; a failure is reported, not raised."""

    def run(self):
        for ext in self.extensions:
            try:
                self._build(ext)
            except Exception as exc:  # the install must survive a failed build
                print(
                    f"normopt: op library not built ({exc}); "
                    "the wrappers will run on pure TensorFlow.",
                    file=sys.stderr,
                )

    def get_outputs(self):
        return [p for p in super().get_outputs() if os.path.exists(p)]

    def _build(self, ext):
        if shutil.which("cmake") is None:
            raise RuntimeError("cmake not found")
        if os.environ.get("NORMOPT_SKIP_BUILD"):
            raise RuntimeError("NORMOPT_SKIP_BUILD is set")
        target = os.path.abspath(self.get_ext_fullpath(ext.name))
        build_dir = os.path.abspath(os.path.join(self.build_temp, "cmake"))
        os.makedirs(build_dir, exist_ok=True)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        configure = [
            "cmake",
            "-S",
            ext.source_dir,
            "-B",
            build_dir,
            f"-DPython_EXECUTABLE={sys.executable}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DNORMOPT_OUTPUT_FILE={target}",
        ]
        subprocess.run(configure, check=True)
        jobs = str(os.cpu_count() or 1)
        subprocess.run(
            ["cmake", "--build", build_dir, "--parallel", jobs], check=True
        )
        if not os.path.exists(target):
            raise RuntimeError(f"CMake did not produce {target}")


setup(
    name="normopt",
    version="0.1.0",
    description=(
        "Gradient-normalized and norm-clipped optimizer wrappers for Keras 3 "
        "on TensorFlow, with fused C++/CUDA ops"
    ),
    packages=find_packages(include=["normopt", "normopt.*"]),
    package_data={"normopt": ["py.typed"]},
    python_requires=">=3.9",
    # TensorFlow itself is an extra so that the package never installs a
    # second TensorFlow distribution beside the one the user already has.
    install_requires=["keras>=3.0", "numpy"],
    extras_require={
        "cpu": ["tensorflow-cpu>=2.16"],
        "gpu": ["tensorflow[and-cuda]>=2.16"],
        "kernels": ["numba"],
        "bench": ["matplotlib", "tqdm"],
        "experiments": ["matplotlib", "tqdm", "scikit-learn"],
        "test": ["pytest", "pytest-benchmark", "hypothesis"],
    },
    ext_modules=[CMakeExtension("normopt.ops._normopt_ops")],
    cmdclass={"build_ext": OptionalCMakeBuild},
    entry_points={"console_scripts": ["normopt=normopt.cli:main"]},
    zip_safe=False,
)

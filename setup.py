"""Build of normopt: the Python package plus the optional compiled op library.

Metadata is in pyproject.toml; this file holds the two build steps setuptools
cannot express there:

- build_ext: the op library (`normopt/ops/_normopt_ops*.so`) is built by
  CMake (normopt/ops/build.py) against the TensorFlow of the environment the
  package is installed into. Under pip's default build isolation that
  TensorFlow is hidden from the build environment; build.find_tf finds it by
  asking the same interpreter without the isolation's PYTHONPATH. A failed or
  impossible build (no cmake, no compiler, no TensorFlow yet) never fails the
  install: the library is then built on first use (normopt/ops/library.py),
  or `normopt build` builds it, and until then the wrappers run on pure
  TensorFlow. Without TensorFlow (a JAX or PyTorch environment) there is
  nothing to build: one line says so. NORMOPT_SKIP_BUILD=1 skips the build
  at install time. On a
  CUDA build of TensorFlow with nvcc on the PATH the library gets the CUDA
  kernels; when that part fails the CPU library is built instead, and one
  line says why the GPU kernels are missing.
- build_py: CMakeLists.txt and csrc/ are copied into the package as
  normopt/_src, so an installed normopt can rebuild its library when
  TensorFlow changes.
"""

import importlib.util
import os
import shutil
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def _build_module():
    """normopt/ops/build.py, loaded by path (the package needs TensorFlow)."""
    path = os.path.join(HERE, "normopt", "ops", "build.py")
    spec = importlib.util.spec_from_file_location("_normopt_build", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
                tail = getattr(exc, "log_tail", "")
                if tail:
                    print(tail, file=sys.stderr)
                print(
                    f"normopt: op library not built at install time ({exc}); "
                    "an installed copy builds it on first use where it can, and "
                    "`normopt build` builds it. Until then the wrappers run on "
                    "pure TensorFlow.",
                    file=sys.stderr,
                )

    def get_outputs(self):
        return [p for p in super().get_outputs() if os.path.exists(p)]

    def _build(self, ext):
        if os.environ.get("NORMOPT_SKIP_BUILD", "").strip() not in ("", "0"):
            raise RuntimeError("NORMOPT_SKIP_BUILD is set")
        nb = _build_module()
        try:
            tf = nb.find_tf(sys.executable)
        except nb.NoTensorFlow:
            # A JAX or PyTorch environment: nothing to build, nothing wrong.
            print("normopt: no TensorFlow here, so no op library to build (it is a "
                  "TensorFlow op); the wrappers run in keras.ops on JAX and PyTorch.",
                  file=sys.stderr)
            return
        missing = nb.missing_tools()
        if missing:
            raise RuntimeError(missing)
        target = os.path.abspath(self.get_ext_fullpath(ext.name))
        print(f"normopt: building the op library for TensorFlow {tf['tf_version']} "
              f"({tf['include']})", file=sys.stderr, flush=True)
        if os.path.exists(target):
            os.remove(target)  # a new inode: a process that loaded the old one keeps it
        nb.build_library(target, tf, src=ext.source_dir, jobs=self.parallel or None,
                         on_line=lambda line: print(line, file=sys.stderr, flush=True))
        record = nb.read_record(target)
        if tf.get("tf_cuda") == "1" and not nb.has_cuda_kernels(record):
            print(f"normopt: the op library has no GPU kernels "
                  f"({nb.cuda_summary(record)})", file=sys.stderr, flush=True)


class BuildPyWithSources(build_py):
    """Also copies CMakeLists.txt and csrc/ into the package as normopt/_src."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install rebuilds from the source tree itself
        nb = _build_module()
        dest = os.path.join(self.build_lib, "normopt", "_src")
        if os.path.isdir(dest):
            shutil.rmtree(dest)
        for rel in nb.source_files(HERE):
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            shutil.copyfile(os.path.join(HERE, rel), os.path.join(dest, rel))


setup(
    ext_modules=[CMakeExtension("normopt.ops._normopt_ops", HERE)],
    cmdclass={"build_ext": OptionalCMakeBuild, "build_py": BuildPyWithSources},
)

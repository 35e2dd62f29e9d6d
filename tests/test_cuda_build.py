"""The CUDA build of the op library (CMakeLists.txt, normopt/ops/build.py).

By default, cheaply, with the real CMakeLists.txt against a fake TensorFlow
(a `tensorflow` module answering CMake's query as a CUDA build would) and a
fake nvcc (a script listing its GPU targets, failing anything else):

    architectures  the default CUDA architectures (TensorFlow's, as nvcc has
                   them, PTX for the newest), $NORMOPT_CUDA_ARCHITECTURES and
                   -DCMAKE_CUDA_ARCHITECTURES over it (configure stops after
                   the plan: NORMOPT_CUDA_PLAN_ONLY)
    no CUDA        a CPU-only TensorFlow, no nvcc on the PATH: CPU kernels,
                   and why
    fallback       the CUDA configure fails (the fake nvcc cannot compile):
                   build.build_library configures the CPU library instead and
                   its record says why (the compile step is a stand-in that
                   writes the record CMake configured); the same after a
                   failed CUDA compile; NORMOPT_CUDA=1 makes it an error

With `-m cuda_wheel` (and network access for pip, about 600 MB): the real
thing in fresh environments with TensorFlow's CUDA wheel of the installed
TensorFlow's version (see test_cuda_wheel_build_and_load).
"""

import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from helpers import run_json_script
from normopt.ops import build

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAKE_TF = textwrap.dedent("""
    import os
    __version__ = "2.99.0"
    _cuda = os.environ.get("FAKE_TF_CUDA", "1") == "1"

    class version:
        GIT_VERSION = "v2.99.0-fake"

    class sysconfig:
        @staticmethod
        def get_compile_flags():
            return ["-I/nonexistent/include", "-D_GLIBCXX_USE_CXX11_ABI=1", "--std=c++17",
                    "-DEIGEN_MAX_ALIGN_BYTES=64"]

        @staticmethod
        def get_link_flags():
            return ["-L/nonexistent", "-l:libtensorflow_framework.so.2"]

        @staticmethod
        def get_lib():
            return "/nonexistent"

        @staticmethod
        def get_include():
            return "/nonexistent/include"

        @staticmethod
        def get_build_info():
            info = {"is_cuda_build": _cuda}
            if _cuda:
                info["cuda_compute_capabilities"] = os.environ["FAKE_TF_CAPS"].split()
            return info

    class test:
        @staticmethod
        def is_built_with_cuda():
            return _cuda
""")

FAKE_NVCC = textwrap.dedent("""\
    #!/bin/sh
    if [ "$1" = "--list-gpu-code" ]; then
      for code in $FAKE_NVCC_CODES; do echo "$code"; done
      exit 0
    fi
    echo "fake nvcc: cannot compile $*" >&2
    exit 1
""")

TF_CAPS = "sm_60 sm_70 sm_80 sm_89 compute_90"  # TensorFlow 2.21's CUDA wheel
NVCC_13 = "sm_75 sm_80 sm_86 sm_87 sm_88 sm_89 sm_90 sm_100 sm_110 sm_103 sm_120 sm_121"


@pytest.fixture
def fakes(tmp_path):
    """(env, tf): an environment whose Python imports the fake TensorFlow
    and whose PATH has the fake nvcc (and cmake, the C++ compiler), and the
    fake TensorFlow as build.find_tf would describe it."""
    if shutil.which("cmake") is None or build.missing_tools():
        pytest.skip(f"no build tools: {build.missing_tools() or 'cmake'}")
    site = tmp_path / "fake_site"
    (site / "tensorflow").mkdir(parents=True)
    (site / "tensorflow" / "__init__.py").write_text(FAKE_TF)
    bin_dir = tmp_path / "fake_bin"
    bin_dir.mkdir()
    (bin_dir / "nvcc").write_text(FAKE_NVCC)
    (bin_dir / "nvcc").chmod(0o755)
    keep = {os.path.dirname(shutil.which(t)) for t in ("cmake", "c++") if shutil.which(t)}
    env = {k: v for k, v in os.environ.items()
           if k not in ("CUDACXX", "CUDAHOSTCXX", build.CUDA_ENV, build.CUDA_ARCHS_ENV)}
    env.update(PYTHONPATH=str(site), FAKE_TF_CAPS=TF_CAPS, FAKE_NVCC_CODES=NVCC_13,
               PATH=os.pathsep.join([str(bin_dir), *sorted(keep), "/usr/bin", "/bin"]))
    tf = {"tf_version": "2.99.0", "tf_git_version": "v2.99.0-fake", "tf_cuda": "1",
          "abi_flags": "-D_GLIBCXX_USE_CXX11_ABI=1 -DEIGEN_MAX_ALIGN_BYTES=64",
          "include": "/nonexistent/include", "python": sys.executable, "env": env}
    return env, tf


def _plan(build_dir, env, *args):
    """CMake's plan lines (configure with NORMOPT_CUDA_PLAN_ONLY=ON)."""
    proc = subprocess.run(
        [shutil.which("cmake"), "-S", REPO, "-B", str(build_dir),
         f"-DPython_EXECUTABLE={sys.executable}", f"-DNORMOPT_OUTPUT_FILE={build_dir}/lib.so",
         "-DNORMOPT_CUDA_PLAN_ONLY=ON", *args],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [line[3:] for line in proc.stdout.splitlines() if line.startswith("-- normopt: ")]


def _archs(lines):
    (line,) = [x for x in lines if x.startswith("normopt: CUDA architectures: ")]
    return re.match(r"normopt: CUDA architectures: (\S*) \((\w+)\)", line).groups()


def test_default_cuda_architectures_follow_tensorflow_and_nvcc(fakes, tmp_path):
    env, _ = fakes
    b = tmp_path / "b"
    lines = _plan(b, env)
    # TF: machine code for sm_60 sm_70 sm_80 sm_89, PTX for compute_90; nvcc 13
    # has no sm_60/sm_70: sm_70 becomes sm_75 (Turing runs it), sm_60 has no
    # Pascal stand-in; PTX for the newest so that newer GPUs JIT it
    assert _archs(lines) == ("75-real;80-real;89-real;90", "default")
    compiler = next(x for x in lines if x.startswith("normopt: CUDA compiler: "))
    assert compiler.startswith(f"normopt: CUDA compiler: {tmp_path / 'fake_bin' / 'nvcc'}, ")
    assert compiler.endswith(", C++17")  # TensorFlow's --std=c++17
    host = re.search(r"host compiler: (\S+),", compiler).group(1)
    assert os.path.realpath(host) == os.path.realpath(shutil.which("c++")), compiler

    # an older nvcc (CUDA 11.8: up to sm_90) and a newer TensorFlow
    lines = _plan(b, dict(env, FAKE_TF_CAPS="sm_70 sm_80 sm_90 compute_100",
                          FAKE_NVCC_CODES="sm_50 sm_60 sm_70 sm_75 sm_80 sm_86 sm_90"))
    assert _archs(lines) == ("70-real;80-real;90", "default")

    lines = _plan(b, dict(env, **{build.CUDA_ARCHS_ENV: "86, 90-virtual"}))
    assert _archs(lines) == ("86;90-virtual", build.CUDA_ARCHS_ENV)
    lines = _plan(b, dict(env, **{build.CUDA_ARCHS_ENV: "86"}), "-DCMAKE_CUDA_ARCHITECTURES=80")
    assert _archs(lines) == ("80", "CMAKE_CUDA_ARCHITECTURES")


def test_cpu_kernels_only_without_cuda_tensorflow_or_nvcc(fakes, tmp_path):
    env, _ = fakes
    lines = _plan(tmp_path / "b", dict(env, FAKE_TF_CUDA="0"))
    assert "normopt: CPU kernels only: TensorFlow 2.99.0 is a CPU-only build" in lines
    path = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if "fake_bin" not in p)
    if shutil.which("nvcc", path=path):
        path = os.pathsep.join(p for p in path.split(os.pathsep)
                               if not os.path.exists(os.path.join(p, "nvcc")))
    lines = _plan(tmp_path / "b", dict(env, PATH=path))
    assert ("normopt: CPU kernels only: no CUDA compiler: nvcc is not on the PATH "
            "(or set CUDACXX)") in lines, lines


def _fake_compile(monkeypatch, fail_cuda_compile=False):
    """Runs CMake's configure for real; the compile step writes the library
    CMake configured: the generated record, behind RECORD_MARKER. With
    `fail_cuda_compile`, a configure that enabled CUDA fails to link."""
    real_run = build._run
    compiles = []

    def run(cmd, env, log, on_line):
        if cmd[:2] != ["cmake", "--build"]:
            return real_run(cmd, env, log, on_line)
        tree = cmd[2]
        with open(os.path.join(tree, "CMakeCache.txt")) as f:
            cache = f.read()
        out = re.search(r"^NORMOPT_OUTPUT_FILE:FILEPATH=(.*)$", cache, re.M).group(1)
        with open(os.path.join(tree, "normopt_build_record.cc")) as f:
            record = re.search(r'"NORMOPT_BUILD_RECORD\\n(.*)";', f.read()).group(1)
        compiles.append(record)
        if fail_cuda_compile and "cuda_kernels=ON" in record:
            on_line("launchers.cu.o: multiple definition of `__device_stub_x'")
            return 2
        with open(out, "wb") as f:
            f.write(b"\x7fELF stand-in" + build.RECORD_MARKER
                    + record.replace("\\n", "\n").encode() + b"\0")
        return 0

    monkeypatch.setattr(build, "_run", run)
    return compiles


def test_failed_cuda_configure_builds_the_cpu_library(fakes, tmp_path, monkeypatch):
    env, tf = fakes
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(build.TREES_ENV, raising=False)
    compiles = _fake_compile(monkeypatch)
    lines = []
    out = build.build_library(str(tmp_path / "out" / "lib.so"), tf, src=REPO,
                              on_line=lines.append, jobs=1)
    assert len(compiles) == 1  # the CUDA configure failed: nothing compiled
    record = build.read_record(out)
    assert record["tf_cuda"] == "1" and record["cuda_kernels"] == "OFF", record
    note = record["cuda_note"]
    assert note.startswith("the CUDA build failed: "), note
    assert any(line.startswith("normopt: the CUDA build failed: ")
               and line.endswith("; building the CPU-only library") for line in lines)
    failed_log = re.search(r"\(log: (\S+)\)$", note).group(1)
    with open(failed_log) as f:
        log = f.read()
    # CMake's error, after the line that starts the CUDA part
    error = note[len("the CUDA build failed: "):note.rindex(" (log: ")]
    after = log.split(build.CUDA_ATTEMPT_LINE, 1)[1]
    assert "CMake Error" in after and error in " ".join(after.split()), (error, log)
    assert build.cuda_summary(record).startswith("not built: the CUDA build failed: ")

    # NORMOPT_CUDA=1: the CUDA kernels are required, the failure is the build's
    monkeypatch.setenv(build.CUDA_ENV, "1")
    with pytest.raises(build.BuildError, match="cmake -S"):
        build.build_library(str(tmp_path / "out" / "lib2.so"), tf, src=REPO, jobs=1)
    assert not os.path.exists(tmp_path / "out" / "lib2.so")


def test_failed_cuda_compile_builds_the_cpu_library(tmp_path, monkeypatch):
    """The configure got through the CUDA part, the link did not."""
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(build.TREES_ENV, raising=False)
    monkeypatch.delenv(build.CUDA_ENV, raising=False)
    monkeypatch.setattr(build, "missing_tools", lambda: None)
    src = tmp_path / "src"
    (src / "csrc").mkdir(parents=True)
    (src / "CMakeLists.txt").write_text("# stand-in\n")
    calls = []

    def run(cmd, env, log, on_line):
        args = " ".join(cmd)
        calls.append(args)
        if cmd[1] == "-S":
            cuda = "-DNORMOPT_CUDA=AUTO" in args
            on_line(f"-- {build.CUDA_ATTEMPT_LINE} /usr/bin/nvcc" if cuda
                    else "-- normopt: CPU kernels only: ...")
            return 0
        if "-DNORMOPT_CUDA=AUTO" in calls[-2]:
            on_line("/usr/bin/ld: launchers.cu.o: multiple definition of `__device_stub_f'")
            on_line("collect2: error: ld returned 1 exit status")
            return 2
        note = re.search(r"-DNORMOPT_CUDA_NOTE=(.*)$", calls[-2]).group(1)
        out = re.search(r"-DNORMOPT_OUTPUT_FILE=(\S+)", calls[-2]).group(1)
        with open(out, "wb") as f:
            f.write(build.RECORD_MARKER + f"cuda_kernels=OFF\ncuda_note={note}\n".encode())
        return 0

    monkeypatch.setattr(build, "_run", run)
    tf = dict(tf_version="2.99.0", tf_cuda="1", include="/x", python=sys.executable, env=None)
    out = build.build_library(str(tmp_path / "lib.so"), tf, src=str(src))
    assert [c.split()[1] for c in calls] == ["-S", "--build", "-S", "--build"]
    assert "-DNORMOPT_CUDA=OFF" in calls[2]
    note = build.read_record(out)["cuda_note"]
    assert note.startswith("the CUDA build failed: /usr/bin/ld: launchers.cu.o: multiple "
                           "definition of `__device_stub_f'"), note


def test_cuda_summary_names_architectures():
    record = {"cuda_kernels": "ON", "cuda_archs": "75-real 80-real 89-real 90",
              "cuda_compiler": "NVIDIA 13.0.88", "cuda_runtime": "static"}
    assert build.cuda_summary(record) == (
        "built for sm_75, sm_80, sm_89, sm_90 + PTX compute_90 (NVIDIA 13.0.88, "
        "CUDA runtime linked statically)")
    assert build.cuda_archs_text("80-real 86 90-virtual") == (
        "sm_80, sm_86 + PTX compute_86, compute_90")
    assert build.cuda_archs_text("native") == "native"
    assert build.cuda_summary({"cuda_kernels": "OFF", "cuda_note": "no nvcc"}) == (
        "not built: no nvcc")


# ---- -m cuda_wheel: TensorFlow's CUDA wheel, for real -------------------------------

_CHECK = textwrap.dedent("""
    import json, keras, numpy as np, normopt
    from normopt import info
    from normopt.ops import library
    v = keras.Variable(np.array([[3.0, 4.0], [0.0, 12.0]], "float32"))
    g = np.array([[1.0, 2.0], [2.0, 4.0]], "float32")
    opt = normopt.NormalizedOptimizer(keras.optimizers.SGD(0.5))
    opt.apply([keras.ops.convert_to_tensor(g)], [v])
    s = library.details()
    print(json.dumps(dict(
        path=opt.last_path.name, reason=opt.last_path.reason, value=v.numpy().tolist(),
        origin=s["origin"], lib=s["path"], record=s["built_for"],
        kernels=library.registered_kernels(),
        info={k: str(x) for k, x in info.collect().items()})))
""")


def _venv(path):
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=300)
    return str(path / "bin" / "python")


def _pip(python, *args, env):
    quiet = [] if "-v" in args else ["-q"]
    proc = subprocess.run([python, "-m", "pip", "install", *quiet, *args], env=env,
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _check(python, env, cwd):
    return run_json_script(python, _CHECK, env, cwd, timeout=3600)


def _assert_fused_on_cpu(result):
    g = [[1.0, 2.0], [2.0, 4.0]]
    norm = sum(x * x for row in g for x in row) ** 0.5  # per-tensor L2 (the default)
    expected = [[w - 0.5 * x / norm for w, x in zip(wr, gr)]
                for wr, gr in zip([[3.0, 4.0], [0.0, 12.0]], g)]
    assert result["path"] == "fused", result
    for got_row, want_row in zip(result["value"], expected):
        for got, want in zip(got_row, want_row):
            assert abs(got - want) <= 1e-5 * max(1.0, abs(want)), (result["value"], expected)


def _without_nvcc(path):
    return os.pathsep.join(p for p in path.split(os.pathsep)
                           if not os.path.exists(os.path.join(p, "nvcc")))


@pytest.mark.cuda_wheel
def test_cuda_wheel_build_and_load(tmp_path):
    """In fresh environments with TensorFlow's CUDA wheel of the installed
    TensorFlow's version (pip downloads about 600 MB once), from a copy of
    this checkout; each build is a full one (about 5 to 10 minutes on 2 cores):

    1. nvcc on the PATH: `pip install <checkout>` builds the CUDA kernels;
       the library loads, TensorFlow lists CPU and GPU kernels of the three
       ops, the fused step runs on the CPU, `normopt info` says so.
    2. the same without nvcc on the PATH: the CPU library (with why in its
       record), fused on the CPU.
    3. tensorflow-cpu, normopt, then `tensorflow` over it (as keras-hub's
       dependencies do): the next import rebuilds into the cache, naming the
       difference, with the CUDA kernels.

    Run: pytest -m cuda_wheel tests/test_cuda_build.py
    """
    import tensorflow as tf
    from test_packaging import _checkout_copy

    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not on the PATH")
    version = tf.__version__
    src = _checkout_copy(str(tmp_path / "checkout"))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("NORMOPT_") and k not in ("PYTHONPATH", "CUDACXX")}
    env[build.CACHE_ENV] = str(tmp_path / "cache")
    cwd = str(tmp_path)

    # 1. nvcc on the PATH
    python = _venv(tmp_path / "venv-cuda")
    _pip(python, f"tensorflow=={version}", env=env)
    proc = _pip(python, "-v", src, env=env)
    assert build.CUDA_ATTEMPT_LINE in proc.stdout + proc.stderr
    result, _ = _check(python, env, cwd)
    assert result["origin"] == "package", result
    record = result["record"]
    assert record["tf_cuda"] == "1" and record["cuda_kernels"] == "ON", record
    # machine code for each architecture, PTX for the newest too
    assert record["cuda_runtime"] == "static", record
    assert re.fullmatch(r"(\d+-real )*\d+", record["cuda_archs"]), record
    assert result["kernels"] == {op: ["CPU", "GPU"] for op in
                                 ("NormoptNorms", "NormoptScale", "NormoptApply")}, result
    _assert_fused_on_cpu(result)
    assert result["info"]["CUDA kernels"].startswith("built for sm_"), result["info"]
    assert "NormoptApply (CPU, GPU)" in result["info"]["op kernels"]

    # 2. nvcc not on the PATH: the CPU library
    no_nvcc = dict(env, PATH=_without_nvcc(env["PATH"]))
    python = _venv(tmp_path / "venv-no-nvcc")
    _pip(python, f"tensorflow=={version}", env=no_nvcc)
    proc = _pip(python, "-v", src, env=no_nvcc)
    assert "the op library has no GPU kernels" in proc.stdout + proc.stderr
    result, _ = _check(python, no_nvcc, cwd)
    assert result["origin"] == "package" and result["record"]["cuda_kernels"] == "OFF", result
    assert result["record"]["cuda_note"].startswith("no CUDA compiler"), result["record"]
    assert result["kernels"] == {op: ["CPU"] for op in
                                 ("NormoptNorms", "NormoptScale", "NormoptApply")}, result
    _assert_fused_on_cpu(result)

    # 3. tensorflow-cpu, normopt, then tensorflow over it: rebuilt on import
    python = _venv(tmp_path / "venv-switch")
    _pip(python, f"tensorflow-cpu=={version}", env=env)
    _pip(python, src, env=env)
    result, _ = _check(python, env, cwd)
    assert result["origin"] == "package" and result["record"]["tf_cuda"] == "0", result
    _pip(python, f"tensorflow=={version}", env=env)
    result, err = _check(python, env, cwd)
    assert ("was built for a CPU-only build of TensorFlow, this is a CUDA build: "
            f"building it for TensorFlow {version}") in err, err
    assert result["origin"] == "cache" and result["record"]["cuda_kernels"] == "ON", result
    assert result["lib"].startswith(str(tmp_path / "cache")), result
    assert "GPU" in result["kernels"]["NormoptApply"], result
    _assert_fused_on_cpu(result)

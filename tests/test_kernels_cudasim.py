"""Numba CUDA kernels under the CUDA simulator (NUMBA_ENABLE_CUDASIM=1).

The simulator must be chosen before Numba is imported, and the rest of the
suite shares this pytest process, so by default this module holds one test
that re-runs this file in a child pytest with the variable set; in that
child (or whenever the variable is already set) the real tests below run.
Cases are the shared checks of test_kernels_numba.py, on tiny chunks and
4-thread blocks so the simulator's Python threads stay cheap; the generic
apply runs every rule for 2 steps on a few shapes (against the reference and
against numba_cpu), its full dtype/mode/decay sweep with --runslow.

The child imports neither Keras nor TensorFlow (~9 s): normopt.kernels comes
without normopt/__init__.py, and conftest is told the backend
(NORMOPT_TESTS_KERAS_BACKEND). The comparison with the TF op runs in this
process instead, which has TensorFlow, against the simulated kernels of a
small child (tests/cudasim_worker.py).
"""

import os
import subprocess
import sys

import pytest

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
KW = dict(chunk_size=8, threads=4)

if not SIMULATOR:

    def test_simulator_suite(request):
        """The child run gets --runslow when this one has it; the only skips
        allowed are the slow sweeps without it."""
        from conftest import keras_backend

        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1",
                   NORMOPT_TESTS_KERAS_BACKEND=keras_backend())
        runslow = ["--runslow"] if request.config.getoption("--runslow") else []
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", __file__]
            + runslow,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            env=env, capture_output=True, text=True, timeout=600 if not runslow else 3600,
        )
        print(done.stdout[-4000:])
        assert done.returncode == 0, (
            "simulator tests failed:\n" + done.stdout[-8000:] + done.stderr[-4000:]
        )
        assert " passed" in done.stdout
        skips = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
        assert all("slow sweep; run with --runslow" in line for line in skips), skips
        assert bool(skips) != bool(runslow), skips

    @pytest.fixture(scope="module")
    def simulated():
        from cudasim_worker import SimulatedKernels

        with SimulatedKernels() as kernels:
            yield kernels

    @pytest.mark.parametrize("dtype", ["float64", pytest.param("float32", marks=pytest.mark.slow)])
    def test_sim_updates_match_tf_op(simulated, dtype):
        """The simulated Numba CUDA kernels (a child process) against the TF
        CPU op (this process), step by step: float64 (the tight tolerance) by
        default; float32 with --runslow (the float32 updates are checked
        against the reference in the simulator suite)."""
        from test_kernels_numba import SHAPE_LISTS, check_matches_tf_op

        before = simulated.calls
        check_matches_tf_op(simulated, dtype, SHAPE_LISTS["chunk_edges"][:5] + [()], steps=2,
                            **KW)
        assert simulated.calls > before

    @pytest.mark.slow
    def test_gpu_validate_dry_run(tmp_path):
        """benchmarks/gpu_validate.py runs its whole logic under the simulator."""
        import json

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        done = subprocess.run(
            [sys.executable, os.path.join(root, "benchmarks", "gpu_validate.py"),
             "--dry-run", "--backends", "numba_cuda", "--out", str(tmp_path)],
            env={k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"},
            capture_output=True, text=True, timeout=600,
        )
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        result = json.loads((tmp_path / "gpu_validate.json").read_text())
        assert result["dry_run"] and result["tensorflow_imported"] is False
        ops = {(r["op"], r["dtype"]) for r in result["parity"]}
        assert {"norms", "scale", "sgd", "adam", "rule"} == {op for op, _ in ops}
        import reference as R

        assert {r["detail"] for r in result["parity"] if r["op"] == "rule"} == set(R.RULE_SLOTS)
        assert all(r["ok"] for r in result["parity"])
        assert result["backends"]["numba_cuda"]["launches"] == {"1": 3, "10": 3, "40": 3}
        assert all(t["met"] for t in result["targets"])
        assert (tmp_path / "gpu_validate.md").read_text().startswith("# GPU validation")

    def test_gpu_validate_dry_run_cupy_front_end_emulated(tmp_path, tmp_path_factory):
        """benchmarks/gpu_validate.py's CuPy backend (parity, launches,
        bandwidth rows, table) with CuPy replaced by tests/emulated_cupy.py:
        the script's CuPy code runs before any GPU sees it. Figures mean nothing."""
        import json

        from test_cuda_compile import build_emulation

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        library = build_emulation(tmp_path_factory, 256)
        runner = (
            "import sys\n"
            f"sys.path[:0] = [{os.path.join(root, 'tests')!r}, {os.path.join(root, 'benchmarks')!r}]\n"
            "import emulated_cupy\n"
            f"sys.modules['cupy'] = emulated_cupy.module({library!r})\n"
            "import gpu_validate\n"
            f"sys.exit(gpu_validate.main(['--dry-run', '--backends', 'cupy', '--out', {str(tmp_path)!r}]))\n"
        )
        done = subprocess.run([sys.executable, "-c", runner], capture_output=True, text=True,
                              timeout=600, env={k: v for k, v in os.environ.items()
                                                if k != "NUMBA_ENABLE_CUDASIM"})
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        result = json.loads((tmp_path / "gpu_validate.json").read_text())
        assert result["device"] == "host emulation (no GPU)" and result["dry_run"]
        assert result["tensorflow_imported"] is False
        assert {r["backend"] for r in result["parity"]} == {"cupy"}
        assert {r["op"] for r in result["parity"]} == {"norms", "scale", "sgd", "adam", "rule",
                                                       "granularity", "sparse"}
        assert all(r["ok"] for r in result["parity"])
        assert result["backends"]["cupy"]["launches"] == {"1": 3, "10": 3, "40": 3}
        assert result["backends"]["cupy"]["bitwise_identical"] is True
        kernels = {r["kernel"] for r in result["bandwidth"]}
        assert {"copy (device to device)", "adam", "sgd momentum", "scale"} <= kernels

else:
    # The simulator busy-waits on its block threads; a short GIL switch
    # interval makes it an order of magnitude faster.
    sys.setswitchinterval(1e-5)

    if "normopt" not in sys.modules:  # normopt.kernels without Keras and TensorFlow
        import types

        _pkg = types.ModuleType("normopt")
        _pkg.__path__ = [os.path.join(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))), "normopt")]
        sys.modules["normopt"] = _pkg

    from conftest import covering  # noqa: E402
    from test_kernels_numba import (  # noqa: E402
        ADAM_VARIANTS,
        KINDS,
        DTYPES,
        MODES,
        RULES,
        SGD_VARIANTS,
        SHAPE_LISTS,
        check_adam,
        check_apply_rejects,
        check_rule,
        check_rule_against,
        rule_cases,
        check_bitwise_repeatable,
        check_momenta_with_zero_momentum,
        check_nan_propagates,
        check_norms,
        check_scale,
        check_sgd,
        many_shapes,
    )

    @pytest.fixture(scope="module")
    def K():
        from normopt.kernels import numba_cuda

        assert numba_cuda.SIMULATED, "numba.cuda is not the simulator"
        from numba.cuda.simulator import kernelapi

        assert kernelapi.FakeCUDAShared.array.normopt_locked
        return numba_cuda

    @pytest.mark.parametrize("kind,dtype", covering(list(KINDS), ["float32", "float64", "float16"]))
    def test_sim_norms_mixed_shapes(K, kind, dtype):
        """Every norm kind on the device in some dtype, every dtype for some
        kinds; the whole kind x dtype product with --runslow."""
        check_norms(K, SHAPE_LISTS["mixed"], dtype, kinds=(kind,), **KW)

    def test_sim_norms_chunk_edges(K):
        check_norms(K, SHAPE_LISTS["chunk_edges"], "float32", **KW)

    def test_sim_norms_bfloat16_working_copy(K):
        check_norms(K, SHAPE_LISTS["mixed"], "bfloat16", kinds=("l2", "std", "min_max"), **KW)

    def test_sim_norms_many_tensors_with_empties(K):
        check_norms(K, many_shapes(60, 12), "float32", kinds=("l1", "std", "min_max"), **KW)

    def test_sim_norms_wide_blocks(K):
        check_norms(K, [(100,), (0,), (33,)], "float32", kinds=("l2", "std"),
                    chunk_size=64, threads=32)

    @pytest.mark.parametrize("mode", ["normalize", "clip"])
    def test_sim_scale(K, mode):
        check_scale(K, SHAPE_LISTS["mixed"], "float32", mode, **KW)

    # every variant and every dtype once; their product with --runslow
    @pytest.mark.parametrize("variant,dtype", covering(sorted(SGD_VARIANTS),
                                                       ["float32", "float16"]))
    def test_sim_sgd(K, variant, dtype):
        check_sgd(K, SHAPE_LISTS["chunk_edges"][:5] + [()], dtype, variant, **KW)

    @pytest.mark.parametrize("variant,dtype", covering(sorted(ADAM_VARIANTS),
                                                       ["float32", "float64", "float16"]))
    def test_sim_adam(K, variant, dtype):
        check_adam(K, SHAPE_LISTS["chunk_edges"][:5] + [()], dtype, variant, **KW)

    def test_sim_update_with_clip_and_std(K):
        check_sgd(K, SHAPE_LISTS["mixed"], "float64", "nesterov", kind="std", mode="clip", **KW)

    @pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
    def test_sim_nan_propagates(K, dtype):
        check_nan_propagates(K, dtype, big=40, **KW)

    def test_sim_momenta_with_zero_momentum(K):
        check_momenta_with_zero_momentum(K, "float32", **KW)

    def test_sim_bitwise_repeatable(K):
        check_bitwise_repeatable(K, many_shapes(20, 30), **KW)

    def test_sim_launches_do_not_depend_on_tensor_count(K):
        """Norms: one stats and one finish launch; Adam adds one, for 3 or 12 tensors."""
        for count in (3, 12):
            arrays = [K.np.ones(5, K.np.float32) for _ in range(count)]
            K.LAUNCHES.clear()
            K.norms(arrays, "l2", **KW)
            assert dict(K.LAUNCHES) == {"chunk_stats": 1, "finish": 1}
            K.LAUNCHES.clear()
            zeros = [K.np.zeros_like(a) for a in arrays]
            K.apply_adam(arrays, arrays, zeros, [z.copy() for z in zeros], lr=0.1, step=1, **KW)
            assert dict(K.LAUNCHES) == {"chunk_stats": 1, "finish": 1, "adam": 1}

    # ---- generic apply, every rule: few shapes and steps (slow simulator);
    # the full sweep with --runslow.

    RULE_SHAPES = SHAPE_LISTS["chunk_edges"][:5] + [()]

    @pytest.fixture(scope="module")
    def cpu():
        from normopt.kernels import numba_cpu

        return numba_cpu

    @pytest.mark.parametrize("rule", RULES)
    def test_sim_rule(K, rule):
        check_rule(K, rule, RULE_SHAPES, "float32", steps=2, **KW)

    @pytest.mark.parametrize("rule", RULES)
    def test_sim_rule_matches_numba_cpu(K, cpu, rule):
        """Simulator and numba_cpu from the same state, a dtype and mode per
        rule in turn (float16 stays float16 on the device, bfloat16 does not)."""
        i = RULES.index(rule)
        check_rule_against(cpu, K, rule, RULE_SHAPES[:4], DTYPES[(i + 2) % len(DTYPES)],
                           mode=MODES[i % 2], decay=bool(i % 3), steps=2,
                           kw=dict(chunk_size=8), other_kw=KW)

    def test_sim_apply_rejects_bad_arguments(K):
        check_apply_rejects(K, **KW)

    @pytest.mark.slow
    @pytest.mark.parametrize("rule,dtype,mode,decay", [
        p.values for p in rule_cases()])
    def test_sim_rule_sweep(K, cpu, rule, dtype, mode, decay):
        check_rule(K, rule, SHAPE_LISTS["chunk_edges"] + [()], dtype, mode=mode, decay=decay,
                   steps=2, **KW)
        check_rule_against(cpu, K, rule, RULE_SHAPES, dtype, mode=mode, decay=decay,
                           steps=2, kw=dict(chunk_size=8), other_kw=KW)

    @pytest.mark.skipif(not os.environ.get("NORMOPT_TESTS_KERAS_BACKEND"),
                        reason="conftest imported Keras: not started by test_simulator_suite")
    def test_sim_child_imported_no_tensorflow():
        """Last: nothing above imported Keras or TensorFlow (each ~9 s here)."""
        assert "tensorflow" not in sys.modules and "keras" not in sys.modules

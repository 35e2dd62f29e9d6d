"""Per-tensor norms on Keras's torch backend: keras.ops against torch._foreach_norm.

    KERAS_BACKEND=torch /work/venvs/torch-d/bin/python benchmarks/torch_foreach_norms.py \
        [--sets big,mlp] [--norms l1,l2,max] [--dtypes float32,bfloat16] [--json PATH]

For each variable set (normopt.bench.cases) and norm, the norm of every
gradient of the set, one value per tensor, three ways, timed interleaved:

    keras_ops    normopt.ops.scale_math.builtin_norm per tensor (the
                 keras.ops path, its overflow check included)
    raw_ops      the bare keras.ops reduction per tensor, no overflow check
    foreach      torch._foreach_norm(grads, ord, dtype=float32 for 16-bit
                 inputs) + eps: one call for all tensors (serial float32
                 sums: see the relative differences)
    chunked      normopt.ops.torch_norms.chunked_norms + eps: two
                 _foreach_norm calls, over chunks of each tensor, then over
                 each one's chunk norms, summed in float64 (torch's CPU
                 kernels sum serially); what the torch backend uses

and the scaling g * s of every gradient by its own scalar: a keras.ops
multiply per tensor against torch._foreach_mul. Every result is checked
against NumPy in float64 (the accumulation dtype rule: float32 for 16-bit
inputs, so a relative difference near float32's epsilon).
"""

import argparse
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

ORDS = {"l1": 1, "l2": 2, "max": float("inf")}


def numpy_norm(x, name, eps):
    a = np.abs(x.astype(np.float64))
    value = {"l1": a.sum(), "l2": np.sqrt((a * a).sum()), "max": a.max()}[name]
    return value + eps


def _raw_norm(ops, x, name, eps):
    acc = "float64" if str(x.dtype).endswith("float64") else "float32"
    y = ops.cast(x, acc)
    if name == "l1":
        return ops.sum(ops.abs(y)) + eps
    if name == "l2":
        return ops.sqrt(ops.sum(ops.square(y))) + eps
    return ops.max(ops.abs(y)) + eps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="big,mlp")
    parser.add_argument("--norms", default="l1,l2,max")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)

    import keras
    import torch
    from keras import ops

    from normopt.bench import cases, environment, timing

    if keras.backend.backend() != "torch":
        parser.error(f"run with KERAS_BACKEND=torch (this is {keras.backend.backend()})")
    try:
        from normopt.ops import scale_math
    except ImportError as exc:  # before the backend-neutral import
        scale_math = None
        print(f"normopt.ops.scale_math not importable here ({exc}): keras_ops left out")
    try:
        from normopt.ops import torch_norms
    except ImportError as exc:
        torch_norms = None
        print(f"normopt.ops.torch_norms not importable here ({exc}): chunked left out")
    eps = keras.config.epsilon()
    rng = np.random.default_rng(0)
    out = {"torch": torch.__version__, "keras": keras.version(),
           "torch_threads": torch.get_num_threads(),
           "load_average_start": environment.load_average(), "rows": []}
    print(f"torch {torch.__version__}, Keras {keras.version()}, "
          f"{torch.get_num_threads()} threads, load {out['load_average_start']}")
    for set_name in args.sets.split(","):
        shapes = cases.step_shapes(set_name)
        host = [rng.standard_normal(s).astype(np.float32) * 1e-2 for s in shapes]
        for dtype in args.dtypes.split(","):
            tdtype = getattr(torch, dtype)
            grads = [torch.from_numpy(h).to(tdtype) for h in host]
            exact = [g.to(torch.float64).numpy() for g in grads]
            acc = torch.float64 if dtype == "float64" else torch.float32
            for name in args.norms.split(","):
                ord_ = ORDS[name]
                calls = {
                    "raw_ops": lambda: [_raw_norm(ops, g, name, eps) for g in grads],
                    "foreach": lambda: torch._foreach_add(
                        torch._foreach_norm(grads, ord_, dtype=acc), eps),
                }
                if scale_math is not None:
                    calls["keras_ops"] = lambda: [scale_math.builtin_norm(g, name, eps)
                                                  for g in grads]
                if torch_norms is not None:
                    # chunked_norms itself: tensor_norms would reuse the
                    # previous call's norms of these same tensors
                    calls["chunked"] = lambda: torch._foreach_add(
                        torch_norms.chunked_norms(grads, ord_, acc), eps)
                want = np.array([numpy_norm(x, name, eps) for x in exact])
                rel = {}
                for impl, call in calls.items():
                    got = np.array([float(v) for v in call()])
                    rel[impl] = float(np.max(np.abs(got - want) / want))
                times = timing.time_calls_interleaved(calls, args.repeats, args.warmup)
                row = {"set": set_name, "tensors": len(shapes), "dtype": dtype,
                       "op": name, "median_s": {k: v["median_s"] for k, v in times.items()},
                       "max_rel_diff_vs_numpy": rel}
                out["rows"].append(row)
                _print(row)
            scales = [torch.tensor(0.5 + i, dtype=acc) for i in range(len(grads))]
            calls = {
                "raw_ops": lambda: [ops.cast(ops.cast(g, acc) * s, g.dtype)
                                    for g, s in zip(grads, scales)],
                "foreach": lambda: torch._foreach_mul(grads, scales),
            }
            # 16-bit: the same bits only if torch forms the product in float32
            ok = all(torch.equal(a, b) for a, b in zip(calls["foreach"](), calls["raw_ops"]()))
            times = timing.time_calls_interleaved(calls, args.repeats, args.warmup)
            row = {"set": set_name, "tensors": len(shapes), "dtype": dtype, "op": "scale",
                   "median_s": {k: v["median_s"] for k, v in times.items()},
                   "same_bits": ok}
            out["rows"].append(row)
            _print(row)
    out["load_average_end"] = environment.load_average()
    print(f"load {out['load_average_end']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


def _print(row):
    t = row["median_s"]
    cells = "  ".join(f"{k} {v * 1e3:8.3f} ms" for k, v in t.items())
    extra = row.get("max_rel_diff_vs_numpy") or {"same_bits": row.get("same_bits")}
    print(f"{row['set']:>5} {row['dtype']:>8} {row['op']:>5}  {cells}  {extra}")


if __name__ == "__main__":
    sys.exit(main())

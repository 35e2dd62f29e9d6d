"""Time per norm call, per layer size, norm and implementation.

For each case (size n, norm, implementation) on a standard-normal array of
`dtype`:

    time per call   median and spread over `repeats` samples, warm-up excluded
    elements/s      n / median
    GB/s            n * itemsize / median / 1e9   (each element read once)
    % bandwidth     GB/s over the copy bandwidth measured in the same run
                    (added by the caller, `timing.add_percent_of_bandwidth`)

Each result is also checked against the pure-TF norm computed in float64
(`rel_diff`), so a fast but wrong implementation shows up in the JSON.
A case that raises is recorded with its error and the sweep goes on.
"""

import math

import numpy as np

from normopt.bench import norm_impls, timing


def _progress(total, enabled, desc):
    from normopt import progress

    return progress.live_bar(total, desc, "case", enabled=enabled)


def run(sizes, norms, impls, dtype="float32", repeats=7, warmup=2,
        eps=None, progress=True, seed=0):
    """Runs the sweep; returns {"unavailable": {impl: reason}, "cases": [...]}."""
    import keras

    eps = keras.config.epsilon() if eps is None else eps
    unavailable = {}
    for impl in impls:
        reason = norm_impls.unavailable_reason(impl)
        if reason is not None:
            unavailable[impl] = reason
    runnable = [i for i in impls if i not in unavailable]
    rng = np.random.default_rng(seed)
    cases = []
    bar = _progress(len(sizes) * len(norms) * len(runnable), progress, "norms")
    with bar:
        for n in sizes:
            x = rng.standard_normal(n).astype(dtype)
            for norm in norms:
                reference = norm_impls.reference_norm(x, norm, eps)
                for impl in runnable:
                    bar.set_postfix_str(f"{impl} {norm} 2^{int(math.log2(n))}")
                    cases.append(
                        _one_case(impl, x, norm, eps, repeats, warmup, reference)
                    )
                    bar.update()
    return {"unavailable": unavailable, "cases": cases}


def _one_case(impl, x, norm, eps, repeats, warmup, reference):
    record = {
        "impl": impl,
        "norm": norm,
        "size": int(x.size),
        "dtype": x.dtype.name,
        "bytes_read": int(x.nbytes),
    }
    try:
        call = norm_impls.prepare(impl, x, norm, eps)
        value = call()  # first call: compilation, tracing, allocation
        stats = timing.time_call(call, repeats, warmup)
    except Exception as exc:  # a broken implementation must not stop the sweep
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        return record
    seconds = stats["median_s"]
    record.update(
        status="ok",
        time=stats,
        elements_per_s=x.size / seconds,
        gb_per_s=x.nbytes / seconds / 1e9,
        value=value,
        reference_value=reference,
        rel_diff=abs(value - reference) / max(abs(reference), 1e-300),
    )
    return record

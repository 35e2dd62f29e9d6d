"""Timing one call repeatedly, and measuring the machine's memory bandwidth.

`time_call(fn, repeats, warmup)` runs `fn` `warmup` times untimed, then
`repeats` timed samples. A sample runs `fn` `number` times back to back
(`number` chosen once so a sample lasts at least `min_sample_s`, so that
microsecond calls are not lost in timer resolution) and records the mean time
per call of that sample. The summary is the median and the spread of the
per-sample times: quartiles (IQR) and min/max.

`memory_bandwidth()` is a STREAM-style copy: a float32 array much larger than
any cache is copied into a preallocated destination by one thread per CPU
(NumPy releases the GIL while copying), and

    bandwidth = 2 * nbytes / fastest copy time   (bytes read + bytes written)

The fastest of the repeats, as STREAM reports, because other work on a
shared machine only ever slows a copy down. A copy is not a ceiling for
read-heavy kernels: each written cache line is also read first
(write-allocate), so a copy moves about 3 * nbytes while 2 * nbytes are
counted, and a kernel that mostly reads can exceed 100% of this figure.

It is measured in the same run as the benchmark, before and after it, and
percentages are of the higher of the two (`reference_bandwidth`): on a
shared machine a probe that ran while others loaded the memory bus reads
low, and a low reference would flatter every percentage.
"""

import os
import threading
import time

import numpy as np


def summarize(samples):
    """Median, quartiles and extremes of per-call times in seconds."""
    s = np.asarray(samples, dtype=np.float64)
    q1, median, q3 = np.percentile(s, [25, 50, 75])
    return {
        "median_s": float(median),
        "q1_s": float(q1),
        "q3_s": float(q3),
        "iqr_s": float(q3 - q1),
        "min_s": float(s.min()),
        "max_s": float(s.max()),
        "repeats": int(s.size),
    }


def calls_per_sample(fn, min_sample_s):
    """How many back-to-back calls make a sample of at least `min_sample_s`."""
    start = time.perf_counter()
    fn()
    one = max(time.perf_counter() - start, 1e-7)
    return int(min(max(1, np.ceil(min_sample_s / one)), 10_000))


def time_call(fn, repeats, warmup, min_sample_s=0.002):
    """Summary of `fn`'s time per call (see the module docstring)."""
    for _ in range(warmup):
        fn()
    number = calls_per_sample(fn, min_sample_s)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - start) / number)
    summary = summarize(samples)
    summary["calls_per_sample"] = number
    return summary


def _threaded_copy(dst, src, threads):
    bounds = np.linspace(0, src.size, threads + 1).astype(np.int64)
    workers = [
        threading.Thread(
            target=np.copyto, args=(dst[lo:hi], src[lo:hi])
        )
        for lo, hi in zip(bounds[:-1], bounds[1:])
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def memory_bandwidth(nbytes=256 * 2**20, repeats=10, threads=None):
    """Copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    threads = threads or os.cpu_count() or 1
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    _threaded_copy(dst, src, threads)  # faults the pages in
    summary = time_call(
        lambda: _threaded_copy(dst, src, threads),
        repeats=repeats,
        warmup=1,
        min_sample_s=0.0,
    )
    return {
        "method": (
            f"NumPy copy of a {nbytes / 2**20:.0f} MiB float32 array into a "
            f"preallocated one, {threads} threads; bytes read + written over "
            f"the fastest of {repeats} copies"
        ),
        "bytes_per_s": 2 * nbytes / summary["min_s"],
        "median_bytes_per_s": 2 * nbytes / summary["median_s"],
        "array_bytes": nbytes,
        "threads": threads,
        "copy_time": summary,
    }


def interleaved_samples(calls, repeats, number, on_round=None, finish=None):
    """{name: [seconds per call of each sample]}, the samples taken in turn.

    `calls` maps a name to a zero-arg call, `number` a name to the calls in
    one of its samples. Round r takes sample r of every call, starting at
    call r mod len(calls), before any call takes sample r+1: a change in
    machine load during the run hits all of them alike, and no call always
    runs right after the same other one. `finish(result)`, when given, waits
    for a sample's last result (work a call leaves running); `on_round()`
    is called after each round.
    """
    names = list(calls)
    samples = {k: [] for k in names}
    for r in range(repeats):
        shift = r % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            fn = calls[name]
            start = time.perf_counter()
            for _ in range(number[name]):
                result = fn()
            if finish is not None:
                finish(result)
            samples[name].append((time.perf_counter() - start) / number[name])
        if on_round:
            on_round()
    return samples


def time_calls_interleaved(calls, repeats, warmup, min_sample_s=0.002):
    """`time_call` for several calls, their samples taken in turn
    (`interleaved_samples`), so that their ratios stay meaningful."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    number = {k: calls_per_sample(fn, min_sample_s) for k, fn in calls.items()}
    samples = interleaved_samples(calls, repeats, number)
    out = {}
    for k in calls:
        out[k] = summarize(samples[k])
        out[k]["calls_per_sample"] = number[k]
    return out


def reference_bandwidth(probes):
    """The highest bytes/s of several `memory_bandwidth` probes."""
    return max(p["bytes_per_s"] for p in probes)


def add_percent_of_bandwidth(records, bytes_per_s):
    """Sets pct_bandwidth = 100 * gb_per_s / bandwidth on each timed record."""
    for r in records:
        if "gb_per_s" in r:
            r["pct_bandwidth"] = 100.0 * r["gb_per_s"] * 1e9 / bytes_per_s

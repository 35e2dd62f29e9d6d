"""Was the machine busy during a benchmark run, and which figures to distrust.

Other work on the machine takes CPU time slices from the benchmark's threads.
A parallel call waits for its slowest thread, so one preempted thread adds a
whole slice (4 ms at 250 Hz) to a call of 70 us, and the figures measure the
scheduler, not the code. Four signals, each against a threshold:

    other CPU share   CPU time the whole machine spent outside this process
                      and its children,
                      over wall time x CPUs, from /proc/stat (Linux; steal
                      time counts): above OTHER_CPU_SHARE
    load average      the 1-minute load average before or after the run
                      above LOAD_PER_CPU x CPUs (the run's own threads count
                      in it, up to one per CPU)
    bandwidth probes  the copy-bandwidth probes before and after the run
                      differ by more than PROBE_DISAGREEMENT of the higher
    sample spread     one figure's samples: IQR / median above SAMPLE_SPREAD

The machine was busy when any of the first three fired. Then every figure is
distrusted: a busy machine can slow all samples of a call alike, so a tight
spread does not clear a figure. On a quiet machine, a figure whose own
samples spread widely is distrusted. Distrusted figures get MARK in the
tables and "trusted": false with the reasons in the JSON.
"""

import os
import time

OTHER_CPU_SHARE = 0.2
LOAD_PER_CPU = 1.5
PROBE_DISAGREEMENT = 0.25
SAMPLE_SPREAD = 0.25
MARK = "!"
BUSY = "the machine was busy during the run"
THRESHOLDS = {"other_cpu_share": OTHER_CPU_SHARE, "load_per_cpu": LOAD_PER_CPU,
              "bandwidth_probe_disagreement": PROBE_DISAGREEMENT,
              "sample_spread": SAMPLE_SPREAD}


def cpu_snapshot():
    """{"machine_s", "own_s", "wall_s"}: CPU seconds the machine spent busy
    (all CPUs, /proc/stat), CPU seconds of this process (all its threads)
    and of its finished children (the other backends' step benchmark runs
    in child processes) and a monotonic clock; "machine_s" is None off
    Linux."""
    user, system, children_user, children_system = os.times()[:4]
    return {"machine_s": _machine_busy_s(),
            "own_s": user + system + children_user + children_system,
            "wall_s": time.monotonic()}


def _machine_busy_s():
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal (guest time is in user)
    ticks = [int(x) for x in fields[1:9]]
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


def other_cpu_share(before, after, cpus):
    """(machine CPU time - own CPU time) / (wall time x cpus) between two
    `cpu_snapshot`s, at least 0; None without /proc/stat."""
    if before["machine_s"] is None or after["machine_s"] is None:
        return None
    wall = after["wall_s"] - before["wall_s"]
    if wall <= 0 or not cpus:
        return None
    other = (after["machine_s"] - before["machine_s"]) - (after["own_s"] - before["own_s"])
    return max(0.0, other / (wall * cpus))


def probe_disagreement(probes):
    """1 - lowest / highest bytes/s of `timing.memory_bandwidth` probes."""
    rates = [p["bytes_per_s"] for p in probes]
    if len(rates) < 2 or max(rates) <= 0:
        return None
    return 1.0 - min(rates) / max(rates)


def machine_verdict(cpus, load_before=None, load_after=None, other_share=None,
                    probes=()):
    """{"busy", "reasons", "signals", "thresholds"} of one run.

    `load_before` / `load_after`: os.getloadavg() triples (or None);
    `other_share`: `other_cpu_share`; `probes`: bandwidth probes.
    """
    disagreement = probe_disagreement(list(probes))
    reasons = []
    if other_share is not None and other_share > OTHER_CPU_SHARE:
        reasons.append(f"other processes used {100 * other_share:.0f}% of the CPU time")
    for when, load in (("before", load_before), ("after", load_after)):
        if load and cpus and load[0] > LOAD_PER_CPU * cpus:
            reasons.append(f"load average {load[0]:.1f} {when} the run on {cpus} CPUs")
    if disagreement is not None and disagreement > PROBE_DISAGREEMENT:
        reasons.append("the bandwidth probes before and after the run differ by "
                       f"{100 * disagreement:.0f}%")
    return {
        "busy": bool(reasons),
        "reasons": reasons,
        "signals": {"cpus": cpus, "load_average_before": load_before,
                    "load_average_after": load_after, "other_cpu_share": other_share,
                    "bandwidth_probe_disagreement": disagreement},
        "thresholds": dict(THRESHOLDS),
    }


def sample_spread(summary):
    """IQR / median of a `timing.summarize` summary (None for a zero median)."""
    median = summary["median_s"]
    return summary["iqr_s"] / median if median > 0 else None


def flag(records, verdict):
    """Sets "trusted" and "untrusted_reasons" on every timed record."""
    for r in records:
        if r.get("status") != "ok" or "time" not in r:
            continue
        reasons = [BUSY] if verdict["busy"] else []
        spread = sample_spread(r["time"])
        if spread is not None and spread > SAMPLE_SPREAD:
            reasons.append(f"samples spread over {100 * spread:.0f}% of the median (IQR)")
        r["trusted"] = not reasons
        r["untrusted_reasons"] = reasons


def mark(record):
    """" !" after a distrusted figure, "" otherwise (or when never flagged)."""
    return f" {MARK}" if record is not None and record.get("trusted") is False else ""


def note(records):
    """The one line under a table with marked figures, else None."""
    flagged = [r for r in records if r.get("trusted") is False]
    if not flagged:
        return None
    if any(BUSY in r["untrusted_reasons"] for r in flagged):
        return (f"{MARK} = not to be trusted: {BUSY} (see above); rerun on a quiet "
                "machine")
    return (f"{MARK} = not to be trusted: its samples spread over more than "
            f"{100 * SAMPLE_SPREAD:.0f}% of their median (IQR)")


def note_lines(records):
    """[`note`], or [] when no figure is marked."""
    line = note(records)
    return [line] if line else []


def summary(verdict):
    """The line printed once after a busy run, else None."""
    if not verdict["busy"]:
        return None
    return (f"warning: {BUSY}: {'; '.join(verdict['reasons'])}. Its figures are "
            f"marked {MARK}: compare them with a run on a quiet machine")

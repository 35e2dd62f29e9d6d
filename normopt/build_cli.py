"""`normopt build`: build the op library for the installed TensorFlow.

For an installed copy, by default into the per-user cache (where normopt
looks when the package's own library is missing or was built for another
TensorFlow); in a source checkout, and with --in-place, into the package
directory (normopt/ops/), replacing the library built at install time. Progress: a live bar on a terminal, one line per stage
(configure, each compiled source, link) elsewhere; --verbose prints CMake's
own output instead.
"""

import importlib.machinery
import os
import sys
import time


def add_arguments(parser):
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--in-place", action="store_true",
                       help="build into the package directory (normopt/ops/); the default "
                            "in a source checkout")
    where.add_argument("--cache", action="store_true",
                       help="build into the per-user cache; the default for an installed copy")
    parser.add_argument("--force", action="store_true",
                        help="build even when an up-to-date library exists")
    parser.add_argument("-j", "--jobs", type=int, default=None,
                        help="parallel compile jobs (default: the number of CPUs)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print CMake's output")
    parser.add_argument("--no-progress", action="store_true", help="no progress output")


def _say(text):
    print(f"normopt build: {text}", flush=True)


def _package_target():
    from normopt.ops import library

    existing = library.library_path()
    if existing:
        return existing
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    return os.path.join(os.path.dirname(os.path.abspath(library.__file__)),
                        "_normopt_ops" + suffix)


def run(args):
    from normopt import progress
    from normopt.ops import build

    missing = build.missing_tools()
    src = build.sources_dir()
    if missing or src is None:
        why = missing or "the sources (CMakeLists.txt, csrc/) are not installed with normopt"
        print(f"normopt build: cannot build here: {why}", file=sys.stderr)
        return 1
    tf = build.current_tf()
    kind = "CUDA build" if tf["tf_cuda"] == "1" else "CPU-only build"
    _say(f"TensorFlow {tf['tf_version']} ({kind}), sources in {src}")

    in_place = args.in_place or not (args.cache or build.sources_are_packaged())
    try:
        target = _package_target() if in_place else build.cache_entry(tf, src)[1]
    except (build.BuildError, OSError) as exc:
        print(f"normopt build: cannot use the cache: {exc}", file=sys.stderr)
        return 1
    if not args.force and build.valid_library(target, tf, src) and (
            in_place or build.untrusted(target) is None):
        _say(f"up to date: {target} (--force rebuilds it)")
        return 0
    record = build.read_record(target) if os.path.isfile(target) else None
    changed = build.differences(record, tf, build.source_hash(src)) if record else []
    if changed and not args.force:
        _say(f"rebuilding {target}: it was built for " + "; for ".join(changed))

    bar = progress.bar(None, "normopt build", "stage",
                       enabled=not (args.no_progress or args.verbose))

    def on_line(line):
        if args.verbose:
            print(line, flush=True)
        stage = build.progress_stage(line)
        if stage:
            bar.set_postfix_str(stage)
            bar.update()

    bar.set_postfix_str("configure")
    start = time.perf_counter()
    try:
        if in_place:
            tmp = f"{target}.tmp-{os.getpid()}"
            try:
                build.build_library(tmp, tf, src=src, jobs=args.jobs, on_line=on_line)
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
            path, built = target, True
        else:
            path, built, _, _ = build.ensure_cached(
                tf, src=src, force=args.force, retry_failed=True, on_line=on_line,
                jobs=args.jobs)
    except build.BuildError as exc:
        bar.close()
        tail = getattr(exc, "log_tail", "")
        if tail and not args.verbose:
            print(tail, file=sys.stderr, end="" if tail.endswith("\n") else "\n")
        print(f"normopt build: failed: {exc}", file=sys.stderr)
        return 1
    bar.close()
    if built:
        _say(f"built {path} in {time.perf_counter() - start:.1f} s")
    else:
        _say(f"up to date: {path} (--force rebuilds it)")
    record = build.read_record(path)
    _say("built for " + build.describe(record))
    if record and record.get("tf_cuda") == "1":
        _say("CUDA kernels " + build.cuda_summary(record))
    return 0

"""Building the op library, recording what it was built against, and the cache.

Imports only the standard library: setup.py loads this file by path (in a
build environment that may have no TensorFlow and no Keras), and `normopt
build --help` must stay light.

    build_library(out, tf)   CMake build of `_normopt_ops` into the file `out`
    read_record(path)        what a built library records (TF version, ABI
                             flags, CUDA, source hash), read from the file
                             without loading it
    compatible(record, tf)   whether that library can be loaded by `tf`
    ensure_cached(tf)        the library for `tf` in the per-user cache,
                             built there (under a lock, atomically) if missing

Every library CMake produces carries its build record: CMakeLists.txt
compiles a generated source holding a string that starts with RECORD_MARKER
and continues with `key=value` lines (tf_version, tf_git_version, abi_flags,
tf_cuda, cuda_kernels, cuda_archs, cuda_compiler, cuda_runtime, cuda_note,
compiler, source_hash).

On a CUDA build of TensorFlow the build compiles the CUDA kernels when nvcc
is found ($NORMOPT_CUDA: auto by default, 1 requires them, 0 skips them);
when that CUDA build fails anywhere, the CPU library is built instead and
its record's cuda_note says why.

The per-user cache lives in $NORMOPT_CACHE_DIR, else $XDG_CACHE_HOME/normopt,
else ~/.cache/normopt. Its folders are created private to the user (mode
0700). A folder that others may write to is not used: a private folder
`private-<uid>` inside it is used instead, and a cached library is loaded
only when this user owns it and neither it nor its folder is writable by
group or others (otherwise it is refused, with the reason on one line, and
rebuilt). Inside the cache:

    ops/<key>/_normopt_ops.so     one library per TF version, ABI and sources
    ops/<key>.lock                held while that library is built
    ops/<key>/build-failed.log    an automatic build failed: not retried
                                  automatically (`normopt build` retries)
    build/<tf key>/src, build     CMake trees, one per TensorFlow
                                  installation: sources are synced into src by
                                  content, so a rebuild recompiles only what
                                  changed (and relinks when nothing did)
"""

import contextlib
import hashlib
import inspect
import json
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import time

CACHE_ENV = "NORMOPT_CACHE_DIR"
TREES_ENV = "NORMOPT_BUILD_TREES"  # where the CMake trees go (default: <cache>/build)
AUTOBUILD_ENV = "NORMOPT_AUTOBUILD"  # "0": never build on first use
CUDA_ENV = "NORMOPT_CUDA"  # auto (default), 1: CUDA kernels required, 0: none
CUDA_ARCHS_ENV = "NORMOPT_CUDA_ARCHITECTURES"  # read by CMakeLists.txt
# CMakeLists.txt prints this line just before it enables CUDA: a build that
# fails after it failed in its CUDA part.
CUDA_ATTEMPT_LINE = "normopt: CUDA kernels: building with"
CUDA_FAILED_LOG = "build-cuda-failed.log"
RECORD_MARKER = b"NORMOPT_BUILD_RECORD\n"
CACHE_LIB_NAME = "_normopt_ops.so"
FAILED_NAME = "build-failed.log"
# What a library must share with the running TensorFlow to be loadable.
COMPAT_KEYS = ("tf_version", "tf_git_version", "abi_flags", "tf_cuda")

_HERE = os.path.dirname(os.path.abspath(__file__))
_PACKAGE = os.path.dirname(_HERE)
# Environment variables pip's isolated build environment sets to hide the
# target environment's site-packages (and so its TensorFlow).
_ISOLATION_VARS = ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONHOME")


def _cmake_lines(tf):
    """The lines CMakeLists.txt's own query of TensorFlow prints (compile
    flags, link flags, library directory, CUDA build, version, git version,
    CUDA architectures), handed to CMake as NORMOPT_TF_LINES so that the
    configure step does not import TensorFlow again."""
    s = tf.sysconfig
    return [" ".join(s.get_compile_flags()), " ".join(s.get_link_flags()), s.get_lib(),
            str(int(tf.test.is_built_with_cuda())), tf.__version__,
            str(tf.version.GIT_VERSION),
            " ".join(s.get_build_info().get("cuda_compute_capabilities") or [])]


# Prints what CMakeLists.txt asks of TensorFlow, plus the include directory
# (which installation it is), as one JSON line.
_TF_QUERY = (
    "import json, os; os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'\n"
    "import tensorflow as tf\n"
    + inspect.getsource(_cmake_lines) +
    "flags = tf.sysconfig.get_compile_flags()\n"
    "print(json.dumps(dict(tf_version=tf.__version__,"
    " tf_git_version=str(tf.version.GIT_VERSION),"
    " abi_flags=' '.join(f for f in flags if f.startswith('-D')),"
    " tf_cuda=str(int(tf.test.is_built_with_cuda())),"
    " include=tf.sysconfig.get_include(), cmake_lines=_cmake_lines(tf))))\n"
)


class BuildError(RuntimeError):
    """A build that could not run or failed; str() says why."""


class NoTensorFlow(BuildError):
    """TensorFlow is not installed for the interpreter (a JAX- or
    PyTorch-only environment): there is no op library to build."""


# ---- sources ---------------------------------------------------------------

def sources_dir():
    """Directory holding CMakeLists.txt and csrc/, or None.

    An installed package carries them in normopt/_src (setup.py copies them
    there); a source checkout or editable install has them at the root.
    """
    for candidate in (os.path.join(_PACKAGE, "_src"), os.path.dirname(_PACKAGE)):
        if (os.path.isfile(os.path.join(candidate, "CMakeLists.txt"))
                and os.path.isdir(os.path.join(candidate, "csrc"))):
            return candidate
    return None


def sources_are_packaged():
    """Whether this is an installed copy carrying its sources in normopt/_src."""
    return os.path.isfile(os.path.join(_PACKAGE, "_src", "CMakeLists.txt"))


def source_files(src):
    """Relative paths of everything the build reads: CMakeLists.txt, csrc/**."""
    files = ["CMakeLists.txt"]
    for root, dirs, names in os.walk(os.path.join(src, "csrc")):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(names):
            if name.endswith((".pyc", ".o", ".so")):
                continue
            files.append(os.path.relpath(os.path.join(root, name), src))
    return sorted(f.replace(os.sep, "/") for f in files)


def source_hash(src):
    """sha256 over the relative path and bytes of every source file."""
    digest = hashlib.sha256()
    for rel in source_files(src):
        digest.update(rel.encode() + b"\0")
        with open(os.path.join(src, rel), "rb") as f:
            digest.update(f.read())
        digest.update(b"\0")
    return digest.hexdigest()


# ---- TensorFlow --------------------------------------------------------------

def current_tf():
    """The build-relevant facts of the TensorFlow imported in this process."""
    import tensorflow as tf

    flags = tf.sysconfig.get_compile_flags()
    return {
        "tf_version": tf.__version__,
        "tf_git_version": str(tf.version.GIT_VERSION),
        "abi_flags": " ".join(f for f in flags if f.startswith("-D")),
        "tf_cuda": str(int(tf.test.is_built_with_cuda())),
        "include": tf.sysconfig.get_include(),
        "cmake_lines": _cmake_lines(tf),
        "python": sys.executable,
        "env": None,
    }


def find_tf(python=None):
    """The TensorFlow `python` imports, as current_tf() describes it.

    Under pip's default build isolation the build backend runs with the target
    environment's interpreter, but PYTHONPATH/PYTHONNOUSERSITE hide that
    environment's site-packages. When TensorFlow is not importable as is, the
    query is retried without those variables; "env" is the environment that
    worked (None: the current one), to be used for CMake as well. Raises
    BuildError saying why when neither finds TensorFlow.
    """
    python = python or sys.executable
    attempts = [None]
    if any(var in os.environ for var in _ISOLATION_VARS):
        attempts.append({k: v for k, v in os.environ.items() if k not in _ISOLATION_VARS})
    last = ""
    for env in attempts:
        proc = subprocess.run([python, "-c", _TF_QUERY], env=env, capture_output=True,
                              text=True, timeout=300)
        if proc.returncode == 0 and proc.stdout.strip():
            info = json.loads(proc.stdout.strip().splitlines()[-1])
            info.update(python=python, env=env)
            return info
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    error = NoTensorFlow if "No module named 'tensorflow'" in last else BuildError
    raise error(f"TensorFlow is not importable by {python} ({last})")


def compatible(record, tf):
    """Whether a library with build `record` can be loaded by TensorFlow `tf`."""
    return all(record.get(key) == tf.get(key) for key in COMPAT_KEYS)


def has_cuda_kernels(record):
    return bool(record) and record.get("cuda_kernels") in ("1", "ON")


def _tf_kind(value):
    return "CUDA build" if value == "1" else "CPU-only build"


def describe(record):
    """'TensorFlow 2.21.0 (v2.21.0-..., CUDA build, ABI flags ...); CUDA kernels; ...'."""
    if not record:
        return "not recorded"
    kind = "CUDA kernels" if has_cuda_kernels(record) else "CPU kernels only"
    return (f"TensorFlow {record.get('tf_version')} ({record.get('tf_git_version')}, "
            f"{_tf_kind(record.get('tf_cuda'))}, ABI flags: {record.get('abi_flags') or 'none'}); "
            f"{kind}; {record.get('compiler', '?')}; "
            f"sources {record.get('source_hash', '')[:12] or '?'}")


def cuda_archs_text(archs):
    """CMake's '75-real 80-real 90' as 'sm_75, sm_80, sm_90 + PTX compute_90'."""
    machine, ptx, other = [], [], []
    for arch in archs.split():
        number, _, kind = arch.partition("-")
        if not number.isdigit():
            other.append(arch)  # native, all, all-major
            continue
        if kind in ("", "real"):
            machine.append(f"sm_{number}")
        if kind in ("", "virtual"):
            ptx.append(f"compute_{number}")
    text = ", ".join(machine + other)
    if ptx:
        text += (" + " if text else "") + "PTX " + ", ".join(ptx)
    return text or "none"


def cuda_summary(record):
    """Whether a library has CUDA kernels and for which GPUs, or why not."""
    if not record:
        return None
    if has_cuda_kernels(record):
        return (f"built for {cuda_archs_text(record.get('cuda_archs', ''))} "
                f"({record.get('cuda_compiler', 'nvcc')}, CUDA runtime linked "
                f"{record.get('cuda_runtime', 'statically').replace('static', 'statically')})")
    note = record.get("cuda_note")
    if not note and "cuda_note" not in record:
        note = "built before normopt recorded why"
    return f"not built: {note or 'no reason recorded'}"


def differences(record, tf, src_hash=None):
    """What differs between a library's build `record` and TensorFlow `tf`
    (and the sources, given their hash), as phrases: 'TensorFlow 2.20.0, this
    is 2.21.0', 'a CPU-only build of TensorFlow, this is a CUDA build', ...
    Empty when nothing does."""
    found = []
    if record.get("tf_version") != tf.get("tf_version"):
        found.append(f"TensorFlow {record.get('tf_version')}, this is {tf.get('tf_version')}")
    elif record.get("tf_git_version") != tf.get("tf_git_version"):
        found.append(f"TensorFlow {record.get('tf_git_version')}, this is "
                     f"{tf.get('tf_git_version')}")
    if record.get("tf_cuda") != tf.get("tf_cuda"):
        found.append(f"a {_tf_kind(record.get('tf_cuda'))} of TensorFlow, this is a "
                     f"{_tf_kind(tf.get('tf_cuda'))}")
    if record.get("abi_flags") != tf.get("abi_flags"):
        found.append(f"ABI flags `{record.get('abi_flags') or 'none'}`, this TensorFlow has "
                     f"`{tf.get('abi_flags') or 'none'}`")
    if src_hash is not None and record.get("source_hash") != src_hash:
        found.append(f"sources {(record.get('source_hash') or '?')[:12]}, these are "
                     f"{src_hash[:12]}")
    return found


# ---- the build record --------------------------------------------------------

def read_record(path):
    """The build record a library file carries, as a dict, or None.

    Read from the file's bytes (a string in its read-only data), so a library
    built for another TensorFlow is never loaded to find that out.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    start = data.find(RECORD_MARKER)
    if start < 0:
        return None
    start += len(RECORD_MARKER)
    end = data.find(b"\0", start)
    text = data[start:end if end >= 0 else len(data)].decode("utf-8", "replace")
    record = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            record[key.strip()] = value.strip()
    return record or None


# ---- tools ---------------------------------------------------------------------

def missing_tools():
    """Why no build can run here (no cmake, no C++ compiler), or None."""
    if shutil.which("cmake") is None:
        return "cmake is not installed (or not on PATH)"
    cxx = os.environ.get("CXX")
    candidates = [cxx.split()[0]] if cxx else ["c++", "g++", "clang++"]
    if not any(shutil.which(c) for c in candidates):
        return f"no C++ compiler found ({', '.join(candidates)})"
    return None


def default_jobs():
    return max(1, os.cpu_count() or 1)


# ---- the cache ---------------------------------------------------------------

def cache_root():
    """The configured cache folder (see private_root for the one used)."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "normopt")
    return os.path.abspath(root)


# ---- keeping the cache private ----------------------------------------------------
# A library in the cache is loaded into the process, and a CMake tree is
# compiled into one: anyone who can write to either runs code as this user.

_warned = set()


def warn_once(text):
    """One line on stderr, once per process."""
    if text not in _warned:
        _warned.add(text)
        print(f"normopt: {text}", file=sys.stderr, flush=True)


def _uid():
    return os.geteuid()


def _ownership_problem(st):
    """Why a file or folder with stat `st` is not this user's alone, or None."""
    if st.st_uid != _uid():
        return f"is owned by uid {st.st_uid}, not by this user (uid {_uid()})"
    writable = [who for who, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH))
                if st.st_mode & bit]
    if writable:
        return (f"is writable by {' and '.join(writable)} "
                f"(mode {stat.S_IMODE(st.st_mode):o})")
    return None


def untrusted(path):
    """Why the cached library `path` must not be loaded, or None.

    It must be a regular file (not a link) this user owns, and neither it
    nor its folder may be writable by anyone else.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        folder_problem = _ownership_problem(os.stat(folder))
        st = os.lstat(path)
    except OSError as exc:
        return f"cannot be checked ({exc.strerror})"
    if folder_problem:
        return f"its folder {folder} {folder_problem}"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    problem = _ownership_problem(st)
    return f"it {problem}" if problem else None


def make_private_dirs(path):
    """Creates `path` and its missing parents with mode 0700.

    Returns why `path` is not private to this user (None when it is).
    """
    path = os.path.abspath(path)
    missing = []
    folder = path
    while not os.path.isdir(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)
    return _ownership_problem(os.stat(path))


def private_root(root):
    """`root` when it is this user's alone (created so when missing), else
    `root`/private-<uid> (the same); the first time in a process it takes
    the second, one line says why. Raises BuildError when neither is."""
    candidates = (root, os.path.join(root, f"private-{_uid()}"))
    problems = []
    for candidate in candidates:
        try:
            problem = make_private_dirs(candidate)
        except OSError as exc:
            problem = f"cannot be created ({exc.strerror})"
        if problem is None:
            if problems:
                warn_once(f"the cache folder {root} {problems[0]}: using {candidate}, "
                          "private to this user, instead")
            return candidate
        problems.append(problem)
    raise BuildError(f"no private cache folder: {root} {problems[0]}, and "
                     f"{candidates[1]} {problems[1]}")


def cache_dir():
    """The cache folder in use: private_root(cache_root())."""
    return private_root(cache_root())


def trees_dir():
    """Where the CMake trees go: $NORMOPT_BUILD_TREES or <cache>/build, private."""
    configured = os.environ.get(TREES_ENV)
    return private_root(os.path.abspath(configured) if configured
                        else os.path.join(cache_dir(), "build"))


def _discard_untrusted(lib, problem, warn):
    """Refuses the cached library `lib` (one line saying why), removes it and
    makes its folder private, so that it is rebuilt there. Raises BuildError
    when the folder is not this user's."""
    folder = os.path.dirname(lib)
    warn(f"not loading the cached library {lib}: {problem}; rebuilding it in a "
         "private folder")
    try:
        if os.stat(folder).st_uid != _uid():
            raise BuildError(f"the cached library {lib} {problem}, and its folder is "
                             "not this user's to rebuild it in")
        os.chmod(folder, 0o700)
        os.unlink(lib)
    except OSError as exc:
        raise BuildError(f"the cached library {lib} {problem}, and it cannot be "
                         f"replaced ({exc.strerror})") from exc


def _short(text, n=8):
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def tf_key(tf):
    """Names one TensorFlow installation: version, ABI, CUDA, where it lives."""
    compat = "|".join(str(tf.get(k)) for k in COMPAT_KEYS)
    return (f"tf{tf['tf_version']}-{'cuda' if tf.get('tf_cuda') == '1' else 'cpu'}-"
            f"{_short(compat + '|' + platform.machine() + '|' + str(tf.get('include')))}")


def entry_key(tf, src_hash):
    """Cache entry of the library for `tf` built from sources `src_hash`."""
    compat = "|".join(str(tf.get(k)) for k in COMPAT_KEYS)
    return (f"tf{tf['tf_version']}-{'cuda' if tf.get('tf_cuda') == '1' else 'cpu'}-"
            f"{_short(compat + '|' + platform.machine())}-src{src_hash[:12]}")


def cache_entry(tf, src=None):
    """(directory, library path) of the cache entry for `tf`; None, None without sources."""
    src = src or sources_dir()
    if src is None:
        return None, None
    entry = os.path.join(cache_dir(), "ops", entry_key(tf, source_hash(src)))
    return entry, os.path.join(entry, CACHE_LIB_NAME)


@contextlib.contextmanager
def file_lock(path):
    """An exclusive lock held by this process while the block runs."""
    make_private_dirs(os.path.dirname(path))
    with open(path, "a+") as f:
        try:
            import fcntl
        except ImportError:  # not POSIX: no inter-process lock
            yield
            return
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def valid_library(path, tf, src=None):
    """`path` holds a library `tf` can load; given `src`, built from those
    sources as they are now (the record's source hash)."""
    record = read_record(path) if os.path.isfile(path) else None
    if record is None or not compatible(record, tf):
        return False
    return src is None or record.get("source_hash") == source_hash(src)


def cached_library(lib, tf, warn=warn_once):
    """`lib` when it is a cached library `tf` can load and this user may
    trust, else None. An untrusted one (see untrusted) is refused, with one
    line through `warn`, and removed, so that it is rebuilt."""
    if not os.path.lexists(lib):
        return None
    problem = untrusted(lib)
    if problem:
        _discard_untrusted(lib, problem, warn)
        return None
    return lib if valid_library(lib, tf) else None


def _private_entry(entry):
    """Creates the cache entry folder private to this user, or makes it so."""
    problem = make_private_dirs(entry)
    if problem is None:
        return
    if os.stat(entry).st_uid != _uid():
        raise BuildError(f"the cache folder {entry} {problem}")
    os.chmod(entry, 0o700)


def ensure_cached(tf, *, src=None, force=False, retry_failed=False, builder=None,
                  on_line=None, jobs=None, on_start=None, warn=warn_once):
    """Path of a library for `tf` in the per-user cache, building it if needed.

    Returns (path, built, waited_s, build_s): `built` is True when this call
    built it. Two processes may call this at once: the build runs under a file
    lock, the second waits and then finds the finished library, and the
    library appears under its final name only complete (built under a
    temporary name, then renamed). A failed automatic build leaves
    build-failed.log and is not retried unless `retry_failed` (what
    `normopt build` passes). `on_start()` is called when this call starts a
    build. A cached library this user cannot trust is refused (one line
    through `warn`) and rebuilt. Raises BuildError.
    """
    src = src or sources_dir()
    if src is None:
        raise BuildError("the op library's sources (CMakeLists.txt, csrc/) are not "
                         "installed with this copy of normopt")
    entry, lib = cache_entry(tf, src)
    if not force and cached_library(lib, tf, warn):
        return lib, False, 0.0, 0.0
    failed = os.path.join(entry, FAILED_NAME)
    t0 = time.perf_counter()
    with file_lock(entry + ".lock"):
        waited = time.perf_counter() - t0
        if not force and cached_library(lib, tf, warn):
            return lib, False, waited, 0.0  # another process built it meanwhile
        _private_entry(entry)
        if os.path.exists(failed) and not (retry_failed or force):
            raise BuildError(f"an earlier build for TensorFlow {tf['tf_version']} failed "
                             f"(log: {failed}); run `normopt build` to try again")
        tmp = os.path.join(entry, f".tmp-{os.getpid()}-{CACHE_LIB_NAME}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # the build creates it afresh
        if on_start is not None:
            on_start()
        start = time.perf_counter()
        try:
            (builder or build_library)(tmp, tf, src=src, on_line=on_line, jobs=jobs)
            if not valid_library(tmp, tf):
                raise BuildError(f"the library built at {tmp} does not record "
                                 f"TensorFlow {tf['tf_version']}")
            os.chmod(tmp, 0o700)  # whatever the umask: loaded only when private
            os.replace(tmp, lib)  # atomic: readers see no file or a whole one
        except BuildError as exc:
            with open(failed, "w") as f:
                f.write(f"{exc}\n{getattr(exc, 'log_tail', '')}")
            raise
        finally:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        with contextlib.suppress(OSError):
            os.remove(failed)
        return lib, True, waited, time.perf_counter() - start


# ---- the build -------------------------------------------------------------------

def _sync_tree(src, dst):
    """Makes dst hold exactly src's source files, writing only those that differ.

    Unchanged files keep their modification time, so CMake recompiles only
    the sources that changed since the tree's last build.
    """
    wanted = set(source_files(src))
    for rel in sorted(wanted):
        a, b = os.path.join(src, rel), os.path.join(dst, rel)
        with open(a, "rb") as f:
            data = f.read()
        try:
            with open(b, "rb") as f:
                if f.read() == data:
                    continue
        except OSError:
            pass
        os.makedirs(os.path.dirname(b), exist_ok=True)
        with open(b, "wb") as f:
            f.write(data)
    if os.path.isdir(os.path.join(dst, "csrc")):
        for rel in source_files(dst):
            if rel not in wanted:
                os.remove(os.path.join(dst, rel))


def _run(cmd, env, log, on_line):
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace")
    for line in proc.stdout:
        log.write(line)
        if on_line is not None:
            on_line(line.rstrip("\n"))
    return proc.wait()


def cuda_mode():
    """CMake's NORMOPT_CUDA from $NORMOPT_CUDA: AUTO (default), ON or OFF."""
    value = os.environ.get(CUDA_ENV, "").strip().lower()
    for mode, spellings in (("AUTO", ("", "auto")), ("ON", ("1", "on", "true", "yes")),
                            ("OFF", ("0", "off", "false", "no"))):
        if value in spellings:
            return mode
    raise BuildError(f"{CUDA_ENV}={value!r}: expected auto, 1 or 0")


_ERROR_RE = re.compile(r"error|multiple definition|undefined reference", re.IGNORECASE)


def first_error(lines):
    """The first error a build log's `lines` report, on one line."""
    for i, line in enumerate(lines):
        if line.startswith("--") or not _ERROR_RE.search(line):
            continue
        text = line.strip()
        if text.startswith("CMake Error"):  # its message follows, indented
            message = []
            for following in lines[i + 1:]:
                if not following.strip():
                    if message:
                        break
                    continue
                if not following.startswith(" "):
                    break
                message.append(following.strip())
            text = " ".join(message) or text
        return text if len(text) <= 300 else text[:297] + "..."
    return "no error message found"


def _cmake(tree, out, tf, src, env, *, jobs, on_line, args):
    """Configures and builds `tree`/build into `out`; the log is `tree`/build.log.

    Raises BuildError with .log_tail, .first_error and .cuda_attempted (the
    failure came after CMake started the CUDA part).
    """
    log_path = os.path.join(tree, "build.log")
    lines = []

    def keep(line):
        lines.append(line)
        if on_line is not None:
            on_line(line)

    with open(log_path, "w") as log:
        configure = [
            "cmake", "-S", os.path.join(tree, "src"), "-B", os.path.join(tree, "build"),
            f"-DPython_EXECUTABLE={tf['python']}", "-DCMAKE_BUILD_TYPE=Release",
            f"-DNORMOPT_OUTPUT_FILE={out}", f"-DNORMOPT_SOURCE_HASH={source_hash(src)}",
            # the architectures are chosen afresh by every configure
            "-UCMAKE_CUDA_ARCHITECTURES", *args,
        ]
        if tf.get("cmake_lines"):
            configure.append("-DNORMOPT_TF_LINES=" + ";".join(tf["cmake_lines"]))
        compile_ = ["cmake", "--build", os.path.join(tree, "build"),
                    "--parallel", str(jobs or default_jobs())]
        for cmd in (configure, compile_):
            if _run(cmd, env, log, keep) != 0:
                err = BuildError(f"`{' '.join(cmd[:2])}` failed (log: {log_path})")
                err.log_tail = "".join(line + "\n" for line in lines[-30:])
                err.first_error = first_error(lines)
                err.cuda_attempted = any(CUDA_ATTEMPT_LINE in line for line in lines)
                err.log_path = log_path
                raise err
    if not os.path.isfile(out):
        raise BuildError(f"CMake did not produce {out} (log: {log_path})")


def build_library(out, tf, *, src=None, jobs=None, on_line=None, cmake_args=()):
    """Builds the op library for TensorFlow `tf` (find_tf/current_tf) into `out`.

    The CMake tree is build/<tf_key> in the cache; its log is build.log
    there. `on_line(text)` gets every line CMake prints. When the CUDA part
    of an automatic CUDA build ($NORMOPT_CUDA unset or auto) fails, the CPU
    library is built instead: the CUDA attempt's log is kept as
    build-cuda-failed.log, one line through `on_line` says so, and the
    library's record (cuda_note) says why. Raises BuildError (with
    `.log_tail`) when a tool is missing or the build fails.
    """
    reason = missing_tools()
    if reason:
        raise BuildError(reason)
    src = src or sources_dir()
    if src is None:
        raise BuildError("the op library's sources (CMakeLists.txt, csrc/) were not found")
    mode = cuda_mode()
    out = os.path.abspath(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tree = os.path.join(trees_dir(), tf_key(tf))
    env = dict(tf["env"]) if tf.get("env") is not None else dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with file_lock(tree + ".lock"):
        make_private_dirs(tree)
        _sync_tree(src, os.path.join(tree, "src"))
        try:
            _cmake(tree, out, tf, src, env, jobs=jobs, on_line=on_line,
                   args=[f"-DNORMOPT_CUDA={mode}", "-DNORMOPT_CUDA_NOTE=", *cmake_args])
        except BuildError as exc:
            if mode != "AUTO" or not getattr(exc, "cuda_attempted", False):
                raise
            failed_log = os.path.join(tree, CUDA_FAILED_LOG)
            shutil.copyfile(exc.log_path, failed_log)
            note = f"the CUDA build failed: {exc.first_error} (log: {failed_log})"
            if on_line is not None:
                on_line(f"normopt: {note}; building the CPU-only library")
            with contextlib.suppress(FileNotFoundError):
                os.remove(out)
            _cmake(tree, out, tf, src, env, jobs=jobs, on_line=on_line,
                   args=["-DNORMOPT_CUDA=OFF", f"-DNORMOPT_CUDA_NOTE={note}", *cmake_args])
    return out


_PROGRESS_RE = re.compile(r"^\[\s*(\d+)%\]\s+(.*)$|^\[(\d+)/(\d+)\]\s+(.*)$")


def progress_stage(line):
    """The stage a CMake output line starts ("compile x.cc", "link"), or None."""
    m = _PROGRESS_RE.match(line.strip())
    if not m:
        return None
    what = m.group(2) or m.group(5) or ""
    if what.startswith(("Building", "Compiling")):
        source = what.split()[-1]
        name = os.path.basename(source)
        return "compile " + (name[:-2] if name.endswith(".o") else name)
    if what.startswith("Linking"):
        return "link"
    return None

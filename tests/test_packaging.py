"""Installing like a real package, and the op library following TensorFlow.

    sdist          the source distribution holds everything the build needs
    record         a built library records the TensorFlow it was built for
    rebuild        a library recorded for another TensorFlow is rebuilt into
                   the per-user cache, with one line saying so (the build is
                   a copy here; the slow test runs a real one)
    fallback       NORMOPT_DISABLE_OPS, no compiler, automatic builds off, a
                   failed build: pure TF, with the reason in `normopt info`
    private cache  cache folders are created private to the user; a cached
                   library others could have written is refused (one line)
                   and rebuilt; a shared cache folder gets a private subfolder
    race           two processes building the same cache entry at once: one
                   builds, both get the whole library, nothing left behind
    install        pip wheel of the sdist and an install of that wheel into a
                   fresh environment (offline, with pip's build isolation)
                   build against the TensorFlow there and run the fused path;
                   a faked recorded version makes a process rebuild it, for
                   real, into the cache (two processes racing at start with
                   --runslow: the race itself is `race` above, through the
                   same ensure_cached); pip install of the sdist itself (the
                   same build, in one step) with --runslow. The builds share
                   this user's CMake trees, so with the checkout already built
                   they only relink
"""

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time
import zipfile
from importlib import metadata

import pytest

from helpers import run_json_script
from normopt.ops import build, library

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PYTHON = sys.executable
# the site-packages holding this environment's TensorFlow (shared with the fresh venv)
SITE = next((p for p in sys.path if p.endswith("site-packages") and os.path.isdir(
    os.path.join(p, "tensorflow"))), None)


# ---- helpers -------------------------------------------------------------------

def _checkout_copy(dest):
    """The files a fresh clone plus the uncommitted work would have."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = os.path.join(REPO, rel)
        if not os.path.isfile(src):
            continue  # deleted in the working tree
        os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
        shutil.copy2(src, os.path.join(dest, rel))
    return dest


def _sdist(tmp_path):
    src = _checkout_copy(str(tmp_path / "src"))
    dist = str(tmp_path / "dist")
    subprocess.run([VENV_PYTHON, "setup.py", "-q", "sdist", "--dist-dir", dist],
                   cwd=src, check=True, capture_output=True, timeout=300)
    (archive,) = [os.path.join(dist, f) for f in os.listdir(dist)]
    return src, archive


def _fake_record(tf, **override):
    """What a build for `tf` records: with CUDA kernels for a CUDA build."""
    record = {k: tf[k] for k in build.COMPAT_KEYS}
    record.update(cuda_kernels="ON" if tf["tf_cuda"] == "1" else "OFF", compiler="test",
                  source_hash="0" * 64)
    record.update(override)
    return record


def _write_fake_library(path, record):
    lines = "".join(f"{k}={v}\n" for k, v in record.items())
    with open(path, "wb") as f:
        f.write(b"\x7fELF fake library" + build.RECORD_MARKER + lines.encode() + b"\0tail")


def _tf_stub():
    return {"tf_version": "2.99.0", "tf_git_version": "v2.99.0-test", "tf_cuda": "0",
            "abi_flags": "-D_GLIBCXX_USE_CXX11_ABI=1", "include": "/nowhere",
            "python": sys.executable, "env": None}


@pytest.fixture
def fake_src(tmp_path):
    """A stand-in source tree (the checkout's csrc/ may be edited meanwhile)."""
    src = tmp_path / "fake_src"
    (src / "csrc").mkdir(parents=True)
    (src / "CMakeLists.txt").write_text("# stand-in\n")
    (src / "csrc" / "kernel.cc").write_text("// stand-in\n")
    return str(src)


@pytest.fixture
def isolated_library(monkeypatch, tmp_path, fake_src):
    """library's load state saved and restored; cache in tmp; nothing loaded."""
    saved = dict(library._cache)
    library.reset()
    monkeypatch.setattr(build, "sources_dir", lambda: fake_src)
    monkeypatch.setattr(build, "sources_are_packaged", lambda: True)  # an installed copy
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(library.DISABLE_ENV, raising=False)
    monkeypatch.delenv(build.AUTOBUILD_ENV, raising=False)
    loaded = []
    monkeypatch.setattr(library, "_load_file", lambda path: loaded.append(path) or object())
    yield loaded
    library.reset()
    library._cache.update(saved)


# ---- sdist -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    """(checkout copy, sdist archive): made once for the tests that read it."""
    return _sdist(tmp_path_factory.mktemp("sdist"))


def test_sdist_holds_everything_the_build_needs(sdist):
    src, archive = sdist
    with tarfile.open(archive) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    needed = set(build.source_files(src)) | {
        "pyproject.toml", "setup.py", "MANIFEST.in", "README.md",
        "normopt/ops/build.py", "normopt/ops/library.py", "normopt/build_cli.py"}
    assert "csrc/normopt/norm_stats.h" in needed and "CMakeLists.txt" in needed
    assert needed - names == set()
    assert not [n for n in names if n.endswith((".so", ".o", ".pyc"))]
    # the version is normopt.__version__, read without importing TensorFlow
    import normopt
    assert os.path.basename(archive) == f"normopt-{normopt.__version__}.tar.gz"


# ---- record --------------------------------------------------------------------

def test_read_record_round_trip(tmp_path):
    tf = _tf_stub()
    _write_fake_library(tmp_path / "lib.so", _fake_record(tf))
    record = build.read_record(tmp_path / "lib.so")
    assert record["tf_version"] == "2.99.0" and record["source_hash"] == "0" * 64
    assert build.compatible(record, tf)
    assert not build.compatible(record, dict(tf, tf_version="2.98.0"))
    assert not build.compatible(record, dict(tf, abi_flags="-D_GLIBCXX_USE_CXX11_ABI=0"))
    (tmp_path / "plain.so").write_bytes(b"\x7fELF no record")
    assert build.read_record(tmp_path / "plain.so") is None
    assert build.read_record(tmp_path / "missing.so") is None


def test_package_library_records_the_running_tensorflow():
    path = library.library_path()
    if path is None:
        pytest.skip("the op library is not built into the package")
    record = build.read_record(path)
    if record is None:
        pytest.skip(f"{path} predates build records (reinstall to rebuild it)")
    assert build.compatible(record, build.current_tf()), record
    assert re.fullmatch(r"[0-9a-f]{64}", record["source_hash"])


def test_source_hash_covers_every_build_input(tmp_path):
    src = _checkout_copy(str(tmp_path / "src"))
    before = build.source_hash(src)
    with open(os.path.join(src, "csrc", "normopt", "norm_stats.h"), "a") as f:
        f.write("\n// changed\n")
    assert build.source_hash(src) != before
    entry_a = build.entry_key(_tf_stub(), before)
    assert entry_a.startswith("tf2.99.0-cpu-") and entry_a.endswith("-src" + before[:12])
    assert build.entry_key(dict(_tf_stub(), tf_version="2.98.0"), before) != entry_a


# ---- rebuild on a TensorFlow change (the build is a copy here) ------------------------

def test_library_for_another_tensorflow_is_rebuilt_into_the_cache(
        isolated_library, monkeypatch, tmp_path, capfd):
    tf = build.current_tf()
    package_lib = tmp_path / "pkg" / "_normopt_ops.so"
    package_lib.parent.mkdir()
    _write_fake_library(package_lib, _fake_record(tf, tf_version="0.0.1"))
    monkeypatch.setattr(library, "library_path", lambda: str(package_lib))
    monkeypatch.setattr(build, "missing_tools", lambda: None)
    calls = []

    def fake_build(out, tf_info, **kwargs):  # a copy standing in for CMake
        calls.append(out)
        time.sleep(0.2)
        _write_fake_library(out, _fake_record(tf_info))

    monkeypatch.setattr(build, "build_library", fake_build)

    status = library.details()
    assert status["loaded"] and status["origin"] == "cache", status
    assert status["path"].startswith(str(tmp_path / "cache" / "ops"))
    assert status["built_for"]["tf_version"] == tf["tf_version"]
    assert isolated_library == [status["path"]] and len(calls) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert re.match(rf"normopt: .* built for TensorFlow 0\.0\.1, this is {re.escape(tf['tf_version'])}"
                    r": building it for TensorFlow .* into .* \.\.\. done in \d+\.\d s$",
                    err[0]), err
    assert "built it for" in library.details()["note"]

    library.reset()  # a new process: the cache entry is found, nothing is built
    status = library.details()
    assert status["origin"] == "cache" and len(calls) == 1
    assert capfd.readouterr().err == ""
    left = os.listdir(os.path.dirname(status["path"]))
    assert left == [build.CACHE_LIB_NAME], left


def test_rebuild_message_names_what_differs(isolated_library, monkeypatch, tmp_path, capfd):
    """Same version, other kind: a CPU-only library in a CUDA TensorFlow (or
    the reverse) is named as such, not as 'built for 2.21.0, this is 2.21.0'."""
    tf = build.current_tf()
    other_kind = "0" if tf["tf_cuda"] == "1" else "1"
    package_lib = tmp_path / "pkg" / "_normopt_ops.so"
    package_lib.parent.mkdir()
    _write_fake_library(package_lib, _fake_record(tf, tf_cuda=other_kind))
    monkeypatch.setattr(library, "library_path", lambda: str(package_lib))
    monkeypatch.setattr(build, "missing_tools", lambda: None)
    monkeypatch.setattr(build, "build_library",
                        lambda out, tf_info, **k: _write_fake_library(out, _fake_record(tf_info)))
    assert library.details()["origin"] == "cache"
    (line,) = capfd.readouterr().err.strip().splitlines()
    kinds = {"0": "CPU-only build", "1": "CUDA build"}
    assert (f"was built for a {kinds[other_kind]} of TensorFlow, this is a "
            f"{kinds[tf['tf_cuda']]}: building it for TensorFlow {tf['tf_version']}") in line, line


def test_differences_name_version_kind_abi_and_sources():
    tf = _tf_stub()
    record = _fake_record(tf)
    assert build.differences(record, tf, "0" * 64) == []
    found = build.differences(
        dict(record, tf_version="2.98.0", tf_cuda="1", abi_flags="-D_GLIBCXX_USE_CXX11_ABI=0"),
        tf, "f" * 64)
    assert found == [
        "TensorFlow 2.98.0, this is 2.99.0",
        "a CUDA build of TensorFlow, this is a CPU-only build",
        "ABI flags `-D_GLIBCXX_USE_CXX11_ABI=0`, this TensorFlow has "
        "`-D_GLIBCXX_USE_CXX11_ABI=1`",
        "sources 000000000000, these are ffffffffffff",
    ]
    assert build.differences(dict(record, tf_git_version="v2.99.0-rc0"), tf) == [
        "TensorFlow v2.99.0-rc0, this is v2.99.0-test"]


def test_library_without_a_record_is_loaded_as_before(isolated_library, monkeypatch, tmp_path):
    lib = tmp_path / "_normopt_ops.so"
    lib.write_bytes(b"\x7fELF built before records existed")
    monkeypatch.setattr(library, "library_path", lambda: str(lib))
    status = library.details()
    assert status["loaded"] and status["origin"] == "package" and status["built_for"] is None
    assert build.describe(status["built_for"]) == "not recorded"


# ---- fallbacks -------------------------------------------------------------------

def test_disabled_by_environment(isolated_library, monkeypatch):
    monkeypatch.setenv(library.DISABLE_ENV, "1")
    assert library.load() is None
    status = library.status()
    assert not status["loaded"] and library.DISABLE_ENV in status["reason"]
    assert isolated_library == []


def test_no_compiler_falls_back_with_the_reason_in_info(isolated_library, monkeypatch):
    monkeypatch.setattr(library, "library_path", lambda: None)
    monkeypatch.setattr(build, "missing_tools", lambda: "cmake is not installed (or not on PATH)")
    monkeypatch.setattr(build, "build_library", lambda *a, **k: pytest.fail("built"))
    status = library.status()
    assert not status["loaded"] and isolated_library == []
    assert "not built at install time" in status["reason"]
    assert "cannot be built here: cmake is not installed" in status["reason"]
    from normopt import info

    collected = info.collect()
    assert collected["op library loaded"] is False
    assert "cmake is not installed" in collected["op library reason"]


def test_source_checkout_without_a_library_reports_it(isolated_library, monkeypatch):
    monkeypatch.setattr(build, "sources_are_packaged", lambda: False)
    monkeypatch.setattr(library, "library_path", lambda: None)
    monkeypatch.setattr(build, "ensure_cached", lambda *a, **k: pytest.fail("cache used"))
    status = library.status()
    assert status == {"loaded": False, "path": None, "reason": status["reason"]}
    assert "not built" in status["reason"] and "normopt build" in status["reason"]


def test_automatic_build_can_be_turned_off(isolated_library, monkeypatch):
    monkeypatch.setenv(build.AUTOBUILD_ENV, "0")
    monkeypatch.setattr(library, "library_path", lambda: None)
    monkeypatch.setattr(build, "build_library", lambda *a, **k: pytest.fail("built"))
    status = library.status()
    assert not status["loaded"] and "normopt build" in status["reason"]


def test_failed_build_is_not_retried_automatically(monkeypatch, tmp_path, fake_src):
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
    calls = []

    def failing(out, tf, **kwargs):
        calls.append(out)
        raise build.BuildError("compiler exploded")

    tf = _tf_stub()
    with pytest.raises(build.BuildError, match="compiler exploded"):
        build.ensure_cached(tf, src=fake_src, builder=failing)
    with pytest.raises(build.BuildError, match="failed .*normopt build"):
        build.ensure_cached(tf, src=fake_src, builder=failing)
    assert len(calls) == 1

    def working(out, tf, **kwargs):
        _write_fake_library(out, _fake_record(tf))

    path, built, _, _ = build.ensure_cached(tf, src=fake_src, builder=working,
                                              retry_failed=True)
    assert built and os.listdir(os.path.dirname(path)) == [build.CACHE_LIB_NAME]


def test_info_names_the_registered_kernels_and_the_cuda_build():
    """`normopt info` against TensorFlow's own kernel registry and the record."""
    from tensorflow.python.framework import kernels

    from normopt import info

    status = library.details()
    if not status["loaded"]:
        pytest.skip(f"the op library is not loaded: {status['reason']}")
    collected = info.collect()
    for op in ("NormoptNorms", "NormoptScale", "NormoptApply"):
        devices = sorted({k.device_type for k in kernels.get_registered_kernels_for_op(op).kernel})
        assert "CPU" in devices and f"{op} ({', '.join(devices)})" in collected["op kernels"]
    record = status["built_for"]
    if record is None:
        assert collected["CUDA kernels"].startswith("not recorded")
        return
    assert collected["CUDA kernels"].startswith(build.cuda_summary(record))
    if record["tf_cuda"] == "0":
        assert collected["CUDA kernels"] == (
            f"not built: TensorFlow {record['tf_version']} is a CPU-only build")
        assert collected["GPU op kernels used"] == "no (none registered)"


def test_normopt_build_without_cmake_says_so(monkeypatch, capsys):
    import argparse

    from normopt import build_cli

    monkeypatch.setattr(build, "missing_tools", lambda: "cmake is not installed (or not on PATH)")
    args = argparse.Namespace(in_place=False, cache=False, force=False, jobs=None,
                              verbose=False, no_progress=True)
    assert build_cli.run(args) == 1
    assert "cannot build here: cmake is not installed" in capsys.readouterr().err


# ---- a private cache ------------------------------------------------------------------

def _mode(path):
    return os.stat(path).st_mode & 0o777


def _cached_fake(tf, record_tf=None):
    """A valid library for `tf` placed where the cache looks for it."""
    entry, lib = build.cache_entry(tf)
    os.makedirs(entry, exist_ok=True)
    _write_fake_library(lib, _fake_record(record_tf or tf))
    return entry, lib


@pytest.mark.parametrize("file_mode,folder_mode,who", [
    (0o664, 0o700, "it is writable by group (mode 664)"),
    (0o600, 0o777, "its folder {entry} is writable by group and others (mode 777)"),
])
def test_cached_library_others_can_write_is_refused_and_rebuilt(
        isolated_library, monkeypatch, capfd, file_mode, folder_mode, who):
    tf = build.current_tf()
    monkeypatch.setattr(library, "library_path", lambda: None)
    monkeypatch.setattr(build, "missing_tools", lambda: None)
    built = []
    monkeypatch.setattr(build, "build_library", lambda out, tf_info, **k: built.append(out)
                        or _write_fake_library(out, _fake_record(tf_info)))
    entry, lib = _cached_fake(tf)
    os.chmod(lib, file_mode)
    os.chmod(entry, folder_mode)
    status = library.details()
    assert status["loaded"] and status["path"] == lib and len(built) == 1, status
    err = capfd.readouterr().err.strip().splitlines()
    assert err[0] == (f"normopt: not loading the cached library {lib}: "
                      f"{who.format(entry=entry)}; rebuilding it in a private folder"), err
    assert "building it for TensorFlow" in err[1] and len(err) == 2, err
    assert _mode(entry) == 0o700 and not _mode(lib) & 0o022
    assert build.untrusted(lib) is None


def test_cached_library_of_another_user_is_refused(isolated_library, monkeypatch, capfd):
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    tf = build.current_tf()
    monkeypatch.setattr(library, "library_path", lambda: None)
    monkeypatch.setattr(build, "missing_tools", lambda: None)
    monkeypatch.setattr(build, "build_library",
                        lambda out, tf_info, **k: _write_fake_library(out, _fake_record(tf_info)))
    entry, lib = _cached_fake(tf)
    os.chown(lib, 65534, -1)
    assert library.details()["loaded"]
    err = capfd.readouterr().err
    assert (f"not loading the cached library {lib}: it is owned by uid 65534, not by this "
            "user (uid 0)") in err, err
    assert os.stat(lib).st_uid == 0


def test_cache_folders_are_created_private(monkeypatch, tmp_path, fake_src):
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path / "a" / "b" / "cache"))
    monkeypatch.delenv(build.TREES_ENV, raising=False)
    old = os.umask(0o002)  # a umask that would leave files and folders group-writable
    try:
        path, built, _, _ = build.ensure_cached(
            _tf_stub(), src=fake_src,
            builder=lambda out, tf, **k: _write_fake_library(out, _fake_record(tf)))
        trees = build.trees_dir()
    finally:
        os.umask(old)
    assert built and build.untrusted(path) is None
    for folder in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "cache",
                   os.path.dirname(os.path.dirname(path)), os.path.dirname(path), trees):
        assert _mode(folder) == 0o700, folder


def test_shared_cache_folder_gets_a_private_subfolder(monkeypatch, tmp_path, fake_src, capfd):
    shared = tmp_path / "scratch"
    shared.mkdir()
    shared.chmod(0o1777)  # everyone may write here
    monkeypatch.setenv(build.CACHE_ENV, str(shared))
    monkeypatch.delenv(build.TREES_ENV, raising=False)
    private = shared / f"private-{os.geteuid()}"
    path, built, _, _ = build.ensure_cached(
        _tf_stub(), src=fake_src,
        builder=lambda out, tf, **k: _write_fake_library(out, _fake_record(tf)))
    assert built and path.startswith(str(private) + os.sep) and _mode(private) == 0o700
    assert build.trees_dir() == str(private / "build")
    err = capfd.readouterr().err.strip().splitlines()
    assert err == [f"normopt: the cache folder {shared} is writable by group and others "
                   f"(mode 1777): using {private}, private to this user, instead"], err


def test_cache_folder_of_another_user_is_not_used(monkeypatch, tmp_path, fake_src):
    """Every folder here looks like someone else's: no private folder, no
    build, the reason."""
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(build, "_uid", lambda: os.geteuid() + 1)
    with pytest.raises(build.BuildError, match=r"no private cache folder: .*cache is owned "
                       r"by uid \d+, not by this user"):
        build.ensure_cached(_tf_stub(), src=fake_src,
                            builder=lambda *a, **k: pytest.fail("built"))


# ---- two processes racing on the cache --------------------------------------------

_RACER = textwrap.dedent("""
    import importlib.util, json, os, sys, time
    spec = importlib.util.spec_from_file_location("nb", sys.argv[1])
    nb = importlib.util.module_from_spec(spec); spec.loader.exec_module(nb)
    tf = json.loads(sys.argv[2]); calls = sys.argv[3]; go = float(sys.argv[4])

    def slow_build(out, tf, **kwargs):   # writes its output slowly, in pieces
        with open(calls, "a") as f:
            f.write(f"{os.getpid()}\\n")
        lines = "".join(f"{k}={tf[k]}\\n" for k in nb.COMPAT_KEYS).encode()
        data = b"\\x7fELF" + b"x" * 200000 + nb.RECORD_MARKER + lines + b"\\0"
        with open(out, "wb") as f:
            for i in range(0, len(data), 20000):
                f.write(data[i:i + 20000]); f.flush(); time.sleep(0.05)

    while time.time() < go:
        time.sleep(0.005)
    path, built, waited, took = nb.ensure_cached(tf, src=sys.argv[5], builder=slow_build)
    with open(path, "rb") as f:
        size = len(f.read())
    print(json.dumps(dict(path=path, built=built, size=size, record=nb.read_record(path))))
""")


def test_two_processes_racing_on_the_cache(tmp_path, fake_src):
    tf = _tf_stub()
    script = tmp_path / "racer.py"
    script.write_text(_RACER)
    env = dict(os.environ, **{build.CACHE_ENV: str(tmp_path / "cache")})
    go = time.time() + 1.0
    procs = [subprocess.Popen(
        [VENV_PYTHON, str(script), build.__file__, json.dumps(tf), str(tmp_path / "calls"),
         str(go), fake_src], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    assert (tmp_path / "calls").read_text().count("\n") == 1  # one build
    assert sorted(r["built"] for r in results) == [False, True]
    assert results[0]["path"] == results[1]["path"]
    assert results[0]["size"] == results[1]["size"] == os.path.getsize(results[0]["path"])
    assert build.compatible(results[0]["record"], tf)
    assert os.listdir(os.path.dirname(results[0]["path"])) == [build.CACHE_LIB_NAME]


# ---- slow: real installs and a real rebuild -------------------------------------------

def _repack_installed(name, wheelhouse):
    """A wheel of an installed pure-Python distribution (for an offline wheelhouse)."""
    dist = metadata.distribution(name)
    fname = f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}-py3-none-any.whl"
    record_name = None
    rows = []
    with zipfile.ZipFile(os.path.join(wheelhouse, fname), "w", zipfile.ZIP_DEFLATED) as whl:
        for path in dist.files:
            rel = str(path).replace(os.sep, "/")
            if rel.startswith("..") or rel.endswith(".pyc") or "__pycache__" in rel:
                continue
            if rel.endswith(".dist-info/RECORD"):
                record_name = rel
                continue
            if rel.endswith(".dist-info/INSTALLER") or rel.endswith(".dist-info/direct_url.json"):
                continue
            data = dist.locate_file(path).read_bytes()
            whl.writestr(rel, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            rows.append(f"{rel},sha256={digest.decode()},{len(data)}")
        rows.append(f"{record_name},,")
        whl.writestr(record_name, "\n".join(rows) + "\n")


def _fresh_env(tmp_path):
    """A venv that sees this environment's TensorFlow (a .pth file), and a wheelhouse.
    Its pip is this environment's, seen through the same .pth file (ensurepip
    would spend ~7 s of CPU installing the same pip into the venv); it installs
    into the venv, whose interpreter runs it."""
    venv = tmp_path / "venv"
    subprocess.run([VENV_PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=300)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "_normopt_test_shared_site.pth"), "w") as f:
        f.write(SITE + "\n")
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    for name in ("setuptools", "wheel", "packaging"):
        _repack_installed(name, str(wheelhouse))
    return python, str(wheelhouse)


_CHECK = textwrap.dedent("""
    import json, keras, normopt, numpy as np
    from normopt.ops import library
    v = keras.Variable(np.ones((4, 3), "float32"))
    opt = normopt.NormalizedOptimizer(keras.optimizers.Adam())
    opt.apply([keras.ops.ones((4, 3))], [v])
    s = library.details()
    print(json.dumps(dict(path=opt.last_path.name, origin=s["origin"], lib=s["path"],
                          module=normopt.__file__, record=s["built_for"])))
""")


def _check(python, env, cwd):
    return run_json_script(python, _CHECK, env, cwd, timeout=600)


def _install_env(tmp_path, archive):
    """(python, env, offline pip arguments, sdist) of a fresh environment.
    Libraries go to a fresh cache; the CMake trees are this user's (the ones
    `pip install -e .` of this checkout filled, same TensorFlow): the sources
    are identical, so each build recompiles nothing that is up to date and
    CI pays for at most one compile (its setup already paid for it)."""
    if SITE is None:
        pytest.skip("TensorFlow is not in a site-packages directory of this Python")
    python, wheelhouse = _fresh_env(tmp_path)
    env = dict(os.environ)
    user_trees = os.path.join(build.cache_root(), "build")
    env.update({build.CACHE_ENV: str(tmp_path / "cache"),
                build.TREES_ENV: os.environ.get(build.TREES_ENV) or user_trees})
    for var in (library.DISABLE_ENV, build.AUTOBUILD_ENV, "NORMOPT_SKIP_BUILD", "PYTHONPATH"):
        env.pop(var, None)
    offline = ["--no-index", "--find-links", wheelhouse, "--no-deps", "-q"]
    return python, env, offline, archive


def _check_installed(result, tmp_path, tf):
    """The fused path ran on the library installed into the fresh venv,
    built for this TensorFlow, with the sources for a rebuild beside it."""
    assert result["path"] == "fused", result
    assert result["origin"] == "package" and result["module"].startswith(str(tmp_path / "venv"))
    assert build.compatible(result["record"], tf)
    src_dir = os.path.join(os.path.dirname(result["module"]), "_src")
    assert os.path.isfile(os.path.join(src_dir, "CMakeLists.txt"))


@pytest.mark.slow
def test_install_sdist_directly(tmp_path, sdist):
    """pip install <sdist>: pip's default build isolation, TensorFlow found
    anyway. (pip builds a wheel of the sdist and installs it: the default run
    does that in two explicit steps, below.)"""
    python, env, offline, archive = _install_env(tmp_path, sdist[1])
    cwd = str(tmp_path)
    subprocess.run([python, "-m", "pip", "install", *offline, archive], env=env, cwd=cwd,
                   check=True, timeout=900)
    result, _ = _check(python, env, cwd)
    _check_installed(result, tmp_path, build.current_tf())


def test_install_wheel_of_the_sdist_then_rebuild_for_another_tensorflow(tmp_path, sdist,
                                                                        request):
    # One process rebuilds by default; two race with --runslow. (A racer
    # costs a TensorFlow start-up, ~8 s of CPU; the race on the cache, one
    # build and both getting the whole library, is test_two_processes_racing_
    # on_the_cache's, through the same build.ensure_cached.)
    racers = 2 if request.config.getoption("--runslow") else 1
    times = {}
    t = time.perf_counter()
    python, env, offline, archive = _install_env(tmp_path, sdist[1])
    times["venv"] = time.perf_counter() - t
    cwd = str(tmp_path)
    tf = build.current_tf()

    # 1. pip wheel <sdist> (pip's build isolation, TensorFlow found anyway),
    #    then install that wheel
    t = time.perf_counter()
    subprocess.run([python, "-m", "pip", "wheel", *offline, "-w", str(tmp_path / "wheels"),
                    archive], env=env, cwd=cwd, check=True, timeout=900)
    (whl,) = os.listdir(tmp_path / "wheels")
    with zipfile.ZipFile(tmp_path / "wheels" / whl) as z:
        names = z.namelist()
    assert [n for n in names if re.fullmatch(r"normopt/ops/_normopt_ops.*\.so", n)], names
    assert "normopt/_src/CMakeLists.txt" in names
    subprocess.run([python, "-m", "pip", "install", *offline, "--force-reinstall",
                    str(tmp_path / "wheels" / whl)], env=env, cwd=cwd, check=True, timeout=300)
    times["pip wheel + install"] = time.perf_counter() - t
    result, _ = _check(python, env, cwd)
    _check_installed(result, tmp_path, tf)
    installed_lib = result["lib"]

    # 2. the installed library now claims another TensorFlow: a process
    #    rebuilds it into the cache and loads it (with --runslow two processes
    #    starting at once: it is rebuilt once, and both load it)
    with open(installed_lib, "rb") as f:
        data = f.read()
    old = f"tf_version={tf['tf_version']}\n".encode()
    assert data.count(old) == 1
    fake = b"tf_version=" + b"0" * (len(old) - len(b"tf_version=") - 1) + b"\n"
    with open(installed_lib, "wb") as f:
        f.write(data.replace(old, fake))
    t = time.perf_counter()
    procs = [subprocess.Popen([python, "-c", _CHECK], env=env, cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(racers)]
    outs = [p.communicate(timeout=900) for p in procs]
    times[f"rebuild ({racers} process{'es' if racers > 1 else ''})"] = time.perf_counter() - t
    for proc, (out, err) in zip(procs, outs):
        assert proc.returncode == 0, err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert [r["path"] for r in results] == ["fused"] * racers, results
    assert {r["origin"] for r in results} == {"cache"}
    assert {r["lib"] for r in results} == {results[0]["lib"]}
    assert results[0]["lib"].startswith(str(tmp_path / "cache" / "ops"))
    assert build.compatible(results[0]["record"], tf)
    announced = [line for _, err in outs for line in err.splitlines()
                 if re.search(r"built for TensorFlow 0+, this is .*: building it for .* "
                              r"done in \d+\.\d s$", line)]
    assert len(announced) == 1, [err for _, err in outs]
    entries = os.listdir(tmp_path / "cache" / "ops")
    assert len([e for e in entries if not e.endswith(".lock")]) == 1, entries
    print("packaging test times:", {k: round(v, 1) for k, v in times.items()})


def test_find_tf_without_tensorflow_is_no_build_error(tmp_path):
    """An environment without TensorFlow (JAX or PyTorch only): find_tf says
    so with its own error, on which setup.py's build step prints one calm
    line and builds nothing (not the failed-build message)."""
    python = tmp_path / "python"
    # -S: no site-packages, so no TensorFlow, as in a JAX-only environment
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    python.chmod(0o755)
    with pytest.raises(build.NoTensorFlow, match="No module named 'tensorflow'"):
        build.find_tf(str(python))

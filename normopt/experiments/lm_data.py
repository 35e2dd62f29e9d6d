"""Character-level text of Python's own standard library, for the lm experiment.

The corpus needs no download: the `.py` files under the running Python's
standard library (`sysconfig.get_paths()["stdlib"]`), without installed
packages (`site-packages`, `dist-packages`) and without test folders
(`test`, `tests`, `idle_test`: much of them is data, not library code).

    order      files sorted by sha256(relative path): fixed for a given
               Python, and spread over the whole library (sorting by name
               would fill the corpus with whatever starts with "_" and "a")
    split      by file: a file is validation when the first byte of its
               hash is below 256 * VALIDATION_SHARE, else training, so no
               file contributes to both
    size       each file's first `max_file_chars` characters, files joined
               with SEPARATOR, taken in order until `train_chars` /
               `val_chars` (the last file cut), a fixed total size
    tokens     one id per character: its code point below 127, OTHER
               (127) for anything else; SEPARATOR (0, NUL) between files

Prepared arrays are cached in the output folder (`corpus_path`), keyed by
the settings, the standard library's location and the Python version.
"""

import dataclasses
import hashlib
import json
import os
import sys
import sysconfig

import numpy as np

VOCAB_SIZE = 128
SEPARATOR = 0  # between files; NUL does not occur in source text
OTHER = 127  # any character outside ASCII 1..126
VALIDATION_SHARE = 0.1
SKIPPED_FOLDERS = frozenset({"site-packages", "dist-packages", "__pycache__",
                             "test", "tests", "idle_test"})
CACHE_VERSION = 1


@dataclasses.dataclass
class Corpus:
    train: np.ndarray  # uint8 token ids
    val: np.ndarray
    train_files: list  # relative paths, in corpus order
    val_files: list
    info: dict  # settings, stdlib root, Python version

    def describe(self):
        return dict(self.info, train_chars=int(self.train.size), val_chars=int(self.val.size),
                    train_files=len(self.train_files), val_files=len(self.val_files))


def stdlib_root():
    return sysconfig.get_paths()["stdlib"]


def source_files(root):
    """Relative paths of the `.py` files under `root`, skipping SKIPPED_FOLDERS."""
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d not in SKIPPED_FOLDERS)
        rel = os.path.relpath(folder, root)
        for name in files:
            if name.endswith(".py"):
                found.append(name if rel == "." else os.path.join(rel, name).replace(os.sep, "/"))
    return sorted(found)


def _digest(path):
    return hashlib.sha256(path.encode("utf-8")).digest()


def is_validation(path):
    """The by-file split: the file's hash decides, independently of the others."""
    return _digest(path)[0] < round(256 * VALIDATION_SHARE)


def hash_order(paths):
    return sorted(paths, key=_digest)


def encode(text):
    """Token ids (uint8) of `text`: code point if in 1..126, else OTHER."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    return np.where((codes >= 1) & (codes < OTHER), codes, OTHER).astype(np.uint8)


def decode(ids):
    return "".join("\u2400" if i == SEPARATOR else "\ufffd" if i == OTHER else chr(i)
                   for i in np.asarray(ids).tolist())


def _read(root, path, max_chars):
    with open(os.path.join(root, path), encoding="utf-8", errors="replace") as f:
        return f.read(max_chars)


def _fill(root, paths, size, max_file_chars):
    """Tokens of `paths` in order, SEPARATOR-joined, cut at `size`; and the files used."""
    parts, used, total = [], [], 0
    for path in paths:
        if total >= size:
            break
        ids = encode(_read(root, path, max_file_chars))
        if ids.size == 0:
            continue
        parts += [ids, np.array([SEPARATOR], np.uint8)]
        used.append(path)
        total += ids.size + 1
    tokens = np.concatenate(parts or [np.zeros(0, np.uint8)])[:size]
    if tokens.size < size:
        raise ValueError(f"the standard library under {root} has only {tokens.size} "
                         f"characters for a split of {size}; ask for less")
    return tokens, used


def build_corpus(train_chars, val_chars, max_file_chars, root=None):
    """The corpus for these sizes from the standard library at `root` (default: this Python's)."""
    root = root or stdlib_root()
    ordered = hash_order(source_files(root))
    val_pool = [p for p in ordered if is_validation(p)]
    train_pool = [p for p in ordered if not is_validation(p)]
    train, train_files = _fill(root, train_pool, train_chars, max_file_chars)
    val, val_files = _fill(root, val_pool, val_chars, max_file_chars)
    info = {"source": "Python standard library .py files", "root": root,
            "python": sys.version.split()[0], "max_file_chars": max_file_chars,
            "vocab_size": VOCAB_SIZE, "validation_share": VALIDATION_SHARE,
            "skipped_folders": sorted(SKIPPED_FOLDERS)}
    return Corpus(train, val, train_files, val_files, info)


def _cache_key(train_chars, val_chars, max_file_chars, root):
    key = {"v": CACHE_VERSION, "train": train_chars, "val": val_chars,
           "max_file": max_file_chars, "root": root, "python": sys.version}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def corpus_path(out_dir, train_chars, val_chars, max_file_chars, root=None):
    key = _cache_key(train_chars, val_chars, max_file_chars, root or stdlib_root())
    return os.path.join(out_dir, f"lm_corpus_{key}.npz")


def load_corpus(out_dir, train_chars, val_chars, max_file_chars, root=None):
    """The corpus, from `corpus_path` when cached there, else built and cached.

    Returns (corpus, cached): `cached` says whether the file was reused.
    """
    root = root or stdlib_root()
    path = corpus_path(out_dir, train_chars, val_chars, max_file_chars, root)
    if os.path.exists(path):
        with np.load(path) as f:
            meta = json.loads(str(f["meta"]))
            return Corpus(f["train"], f["val"], meta["train_files"], meta["val_files"],
                          meta["info"]), True
    corpus = build_corpus(train_chars, val_chars, max_file_chars, root)
    os.makedirs(out_dir, exist_ok=True)
    meta = json.dumps({"train_files": corpus.train_files, "val_files": corpus.val_files,
                       "info": corpus.info})
    partial = path + ".partial.npz"  # np.savez appends .npz to other names
    np.savez(partial, train=corpus.train, val=corpus.val, meta=np.array(meta))
    os.replace(partial, path)
    return corpus, False


def train_batches(tokens, steps, batch_size, context, seed):
    """Start offsets (steps, batch_size) of random training windows of context + 1 tokens."""
    rng = np.random.RandomState(seed)
    return rng.randint(0, tokens.size - context, size=(steps, batch_size))


def windows(tokens, starts, context):
    """(inputs, targets), each (len(starts), context) int32: targets are inputs shifted by one."""
    idx = np.asarray(starts)[..., None] + np.arange(context + 1)
    chunk = tokens[idx].astype(np.int32)
    return chunk[..., :-1], chunk[..., 1:]


def validation_starts(tokens, count, context):
    """`count` evenly spaced window starts over the validation text (fixed for every run)."""
    return np.linspace(0, tokens.size - context - 1, count).astype(np.int64)

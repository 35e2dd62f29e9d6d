"""Progress output for the CLI: a live bar on a terminal, plain lines elsewhere.

    bar = progress.bar(total, "demo", "epoch")    # stream: sys.stderr
    bar.set_postfix_str("Adam")                   # start of a stage
    bar.update()                                  # one unit done
    bar.close()                                   # (or use it as a context manager)

On a terminal (`stream.isatty()`) this is a tqdm bar redrawn in place with
carriage returns. On anything else (a pipe, a file, a CI log) the `\\r` redraws
would pile up as dozens of lines, so it prints one plain line per finished
stage instead (a stage ends when the postfix changes or the bar closes):

    demo: Adam done (15/45 epochs, 3.2 s)

`enabled=False` (a `--no-progress` flag) prints nothing at all. Every
subcommand decides through `is_terminal` / `bar`, so the rule lives here once.
"""

import sys
import time


def is_terminal(stream=None):
    """Whether `stream` (default sys.stderr) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def live_bar_enabled(enabled=True, stream=None):
    """Whether to draw a live (carriage-return) bar on `stream` (default
    sys.stderr): on a terminal, with tqdm (optional) installed.

    For code that takes only an on/off flag (see `live_bar`).
    """
    from normopt import extras

    return bool(enabled) and is_terminal(stream) and extras.available("tqdm")


class NullProgress:
    """A bar that prints nothing."""

    n = 0

    def update(self, n=1):
        del n

    def set_postfix_str(self, text="", refresh=True):
        del text, refresh

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class LineProgress(NullProgress):
    """The bar's non-terminal form: one line per finished stage, no `\\r`."""

    def __init__(self, total, desc, unit, stream):
        self.total, self.desc, self.unit, self.stream = total, desc, unit, stream
        self.n = 0
        self._label = None
        self._stage_start = time.perf_counter()
        self._closed = False

    def update(self, n=1):
        self.n += n

    def set_postfix_str(self, text="", refresh=True):
        del refresh
        if text == self._label:
            return
        self._finish_stage()
        self._label = text
        self._stage_start = time.perf_counter()

    def close(self):
        if self._closed:
            return
        self._closed = True
        self._finish_stage()

    def _finish_stage(self):
        if self._label is None and self.n == 0:
            return  # nothing has happened yet
        what = f" {self._label}" if self._label else ""
        total = f"/{self.total}" if self.total else ""
        seconds = time.perf_counter() - self._stage_start
        print(f"{self.desc}:{what} done ({self.n}{total} {self.unit}s, {seconds:.1f} s)",
              file=self.stream, flush=True)


def bar(total, desc, unit, stream=None, enabled=True):
    """A progress bar on `stream` (default sys.stderr, looked up at call time).

    tqdm on a terminal, `LineProgress` elsewhere or where tqdm (optional) is
    not installed, `NullProgress` when not `enabled`. All three have
    update(n), set_postfix_str(text), close() and work as context managers.
    """
    stream = sys.stderr if stream is None else stream
    if not enabled:
        return NullProgress()
    if not live_bar_enabled(True, stream):
        return LineProgress(total, desc, unit, stream)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=stream)


def live_bar(total, desc, unit, enabled=True, stream=None):
    """A tqdm bar on `stream` erased when closed, where `live_bar_enabled`;
    else `NullProgress` (for fine-grained progress not worth plain lines)."""
    stream = sys.stderr if stream is None else stream
    if not live_bar_enabled(enabled, stream):
        return NullProgress()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=stream, leave=False)

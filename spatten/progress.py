"""Progress of long steps, as a person wants it on a terminal and in a log.

    from spatten.progress import progress

    bar = progress(len(points), "top-k RTL", unit="point")     # a counted loop
    for p in points:
        ...
        bar.update(1)
    bar.close()

    status = progress(None, "ulx3s-85f topk: elaborating")     # a step with phases
    status.set_description_str("ulx3s-85f topk: nextpnr: placing")   # as often as you like
    status.close()

On a terminal (the stream is a TTY) the step is one live line, redrawn in place (a tqdm bar).
In a log (the stream is not a TTY: CI, ``make demo > log``) nothing is redrawn: a line when the
step starts, when its phase (description) changes to one it has not shown yet, at most one a
minute (`LOG_INTERVAL`) while nothing else changes, and one when it ends. There is never a
carriage return in a log.
"""

from __future__ import annotations

import sys
import time

__all__ = ["LOG_INTERVAL", "LogProgress", "is_terminal", "progress"]

#: Seconds between two lines of a step that has not changed phase, in a log.
LOG_INTERVAL = 60.0


def is_terminal(stream) -> bool:
    """Whether `stream` is a terminal (its `isatty()` says so)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:          # a closed file
        return False


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class LogProgress:
    """The log form of a progress bar: whole lines, few of them (see the module's docstring).

    It offers the part of tqdm's interface the project uses: `update(n)`,
    `set_description_str(desc)`, `close()`, `write(text)`, and works as a context manager.
    Each line reads ``DESC: N/TOTAL UNIT [mm:ss]`` (``DESC [mm:ss]`` without a total), the last
    one of a counted step with ``done`` appended. `clock` is for tests (seconds, monotonic)."""

    def __init__(self, total: int | None, desc: str, *, stream=None, unit: str = "it",
                 interval: float = LOG_INTERVAL, clock=time.monotonic):
        if total is not None and (isinstance(total, bool) or not isinstance(total, int)
                                  or total < 0):
            raise ValueError(f"total must be a non-negative integer or None, not {total!r}")
        if not interval > 0:
            raise ValueError(f"interval must be a positive number of seconds, not {interval!r}")
        self.total, self.desc, self.unit = total, desc, unit
        self.n = 0
        self._stream = stream
        self._interval = interval
        self._clock = clock
        self._start = clock()
        self._last_line = self._start
        self._shown = {desc}
        self._closed = False
        self._line()

    @property
    def stream(self):
        # sys.stderr looked up at each line: pytest's capture replaces it after import
        return sys.stderr if self._stream is None else self._stream

    def _line(self, suffix: str = "") -> None:
        now = self._clock()
        self._last_line = now
        count = "" if self.total is None else f": {self.n}/{self.total} {self.unit}"
        print(f"{self.desc}{count} [{_clock(now - self._start)}]{suffix}", file=self.stream,
              flush=True)

    def _tick(self) -> None:
        if self._clock() - self._last_line >= self._interval:
            self._line()

    def update(self, n: int = 1) -> None:
        """`n` more done: a line only if none was written for `interval` seconds."""
        self.n += n
        self._tick()

    def set_description_str(self, desc: str, refresh: bool = True) -> None:
        """A new phase: a line at once if this phase has not been shown before, otherwise only
        when `interval` seconds have passed (a phase seen again is not news). With
        `refresh=False` the next line shows it (as tqdm does)."""
        changed = desc != self.desc
        self.desc = desc
        if not refresh:
            return
        if changed and desc not in self._shown:
            self._shown.add(desc)
            self._line()
        else:
            self._tick()

    def write(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        """The last line (once): the final count and the time taken (a step without a total ends
        on its description, which should say how it ended)."""
        if not self._closed:
            self._closed = True
            self._line("" if self.total is None else " done")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress(total: int | None, desc: str, *, unit: str = "it", stream=None, leave=None,
             interval: float = LOG_INTERVAL, clock=time.monotonic):
    """A progress display for a step of `total` units (None: a step with phases only, shown
    with its elapsed time), on `stream` (default stderr).

    On a terminal: a tqdm bar, redrawn at most 10 times a second; it stays on the screen when
    done if `leave` (default: only for a step without a total). Otherwise: a `LogProgress`,
    whole lines at most every `interval` seconds apart unless the phase changes (`clock`:
    seconds, for tests)."""
    out = sys.stderr if stream is None else stream
    if not is_terminal(out):
        return LogProgress(total, desc, stream=stream, unit=unit, interval=interval,
                           clock=clock)
    from tqdm import tqdm

    if leave is None:
        leave = total is None
    if total is None:
        return tqdm(total=None, bar_format="{desc} [{elapsed}]", file=out, desc=desc,
                    leave=leave, mininterval=0.1)
    return tqdm(total=total, desc=desc, unit=unit, file=out, leave=leave, dynamic_ncols=True,
                mininterval=0.1)

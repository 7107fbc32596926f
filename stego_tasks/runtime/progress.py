"""Progress for long stages: a tqdm bar on a terminal, plain periodic log lines otherwise.

Callers outside the library (a Prefect flow publishing a progress artifact) can follow every
`Progress` with `progress_listener(callback)`: the callback gets (desc, count, total) when a
bar starts, on every update and when it closes, from the thread that counts.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType

log = logging.getLogger("stego")

ProgressCallback = Callable[[str, int, int], None]
_LISTENERS: list[ProgressCallback] = []


@contextmanager
def progress_listener(callback: ProgressCallback) -> Iterator[None]:
    """Call `callback(desc, count, total)` for every `Progress` counting inside the block."""
    _LISTENERS.append(callback)
    try:
        yield
    finally:
        _LISTENERS.remove(callback)


def _tell(desc: str, count: int, total: int) -> None:
    for callback in tuple(_LISTENERS):
        callback(desc, count, total)


class Progress:
    """Count finished items and report rate and ETA.

    On a terminal it draws a tqdm bar; in logs (CI, Prefect workers, `dvc repro` piped to
    a file) it writes one line every `log_every_s` seconds instead of redrawing a bar.

    Args:
        total: number of items expected.
        desc: what is being counted, e.g. "extract train".
        unit: the item's name, e.g. "img".
        log_every_s: seconds between log lines when not on a terminal.
        started_at: `time.monotonic()` when the work began, if before this object (the
            rate then counts from there, not from the first finished item).
    """

    def __init__(self, total: int, desc: str, unit: str = "it", log_every_s: float = 10.0, started_at: float | None = None):
        self.total = total
        self.desc = desc
        self.unit = unit
        self.count = 0
        self._start = time.monotonic() if started_at is None else started_at
        self._last_log = self._start
        self._log_every_s = log_every_s
        self._bar = None
        self._logged_count = -1
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)
        _tell(desc, 0, total)

    def update(self, n: int = 1, **postfix: float) -> None:
        """Record `n` more finished items; `postfix` values (e.g. loss) are shown too."""
        self.count += n
        _tell(self.desc, self.count, self.total)
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
            return
        now = time.monotonic()
        if now - self._last_log >= self._log_every_s or self.count >= self.total:
            self._last_log = now
            self._logged_count = self.count
            log.info("%s", self.line(**postfix))

    def line(self, **postfix: float) -> str:
        """One human line: count/total, rate, ETA and postfix values."""
        elapsed = max(time.monotonic() - self._start, 1e-9)
        rate = self.count / elapsed
        eta = (self.total - self.count) / rate if rate > 0 else float("inf")
        extra = "".join(f" {k}={v:.4g}" for k, v in postfix.items())
        return (
            f"{self.desc}: {self.count}/{self.total} {self.unit} "
            f"({rate:.2f} {self.unit}/s, ETA {eta:.0f} s){extra}"
        )

    def close(self) -> None:
        """Finish the bar (or write the final log line)."""
        _tell(self.desc, self.count, self.total)
        if self._bar is not None:
            self._bar.close()
        elif self._logged_count != self.count:
            log.info("%s", self.line())

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

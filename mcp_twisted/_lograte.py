"""One log line for a burst of the same event, not one per occurrence.

Bad input can repeat an event thousands of times a second (a batch of
refused requests, a flood of half-open connections); each still gets its
answer, but the log says it once per interval with a count, so an attacker
cannot turn a cheap flood into an expensive, unreadable log.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger


class RepeatedEventLog:
    """Logs ``format`` at info at most once per ``interval`` seconds.

    Each line carries ``count``: how many times the event happened since the
    previous line. The first occurrence is logged at once; the rest of a
    burst is logged when the interval ends, with the fields of its last
    occurrence, so no count is lost.
    """

    def __init__(self, log: Logger, clock: IReactorTime, format: str, interval: float = 10.0) -> None:
        self.log = log
        self.clock = clock
        self.format = format
        self.interval = interval
        self.count = 0
        self.fields: dict[str, Any] = {}
        self.next_line_at = 0.0
        self._flush_call: IDelayedCall | None = None

    def __call__(self, times: int = 1, **fields: Any) -> None:
        self.count += times
        self.fields = fields
        now = self.clock.seconds()
        if now >= self.next_line_at:
            self._flush()
        elif self._flush_call is None:
            self._flush_call = self.clock.callLater(self.next_line_at - now, self._flush)

    def logged_elsewhere(self) -> None:
        """The caller logged an occurrence itself (with more detail, such as
        a traceback): the next are counted from now, as after a line of ours."""
        self.next_line_at = self.clock.seconds() + self.interval

    def _flush(self) -> None:
        self._flush_call = None
        if self.count:
            self.log.info(self.format, count=self.count, **self.fields)
            self.count = 0
            self.next_line_at = self.clock.seconds() + self.interval

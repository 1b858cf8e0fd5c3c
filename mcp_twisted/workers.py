"""``--workers N``: a thin parent that keeps N ``twistd mcpws`` children running.

Each child is an ordinary server started with ``--reuse-port``: it binds the
same port itself and the kernel spreads new connections among the children
(``SO_REUSEPORT``). ``{worker}`` in an argument becomes the child's number
(1 to N), for what each child must have of its own: a metrics or health
listener (``--metrics-endpoint tcp:910{worker}``). The parent holds no socket and passes none; it only
starts the children, starts again one that dies (after a pause that grows
while children keep dying young), forwards its own stop (SIGTERM) to them as
SIGTERM and waits for them to finish draining. Under systemd, the template
units in ``etc/`` do the same job without this parent.
"""

from __future__ import annotations

import contextlib
import getopt
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["WORKER_NUMBER", "WorkersService", "child_arguments", "twistd_command"]

log = Logger()

# A child that ran this long is healthy: the next restart comes at once again.
HEALTHY_RUN = 10.0
MAX_RESTART_DELAY = 30.0
WORKER_NUMBER = "{worker}"


def child_arguments(arguments: Sequence[str]) -> list[str]:
    """The ``mcpws`` arguments of a child: the parent's, without ``--workers``,
    with ``--reuse-port``.

    They are parsed as the parent's were, so that ``--workers`` goes however
    it was spelled (getopt takes ``--work 2`` and ``--worker=2`` too: a child
    given either would start workers of its own, without end), and no value
    that looks like an option is mistaken for one.
    """
    from mcp_twisted.tap import Options

    parser = Options()
    parsed, _ = getopt.getopt(list(arguments), parser.shortOpt, parser.longOpt)  # none positional
    result: list[str] = []
    for option, value in parsed:
        if option == "--workers":
            continue
        result.append(option)
        takes_value = (option[2:] + "=" in parser.longOpt if option.startswith("--")
                       else option[1:] + ":" in parser.shortOpt)
        if takes_value:
            result.append(value)
    if "--reuse-port" not in result:
        result.append("--reuse-port")
    return result


def twistd_command(arguments: Sequence[str]) -> list[str]:
    """The command line of one child: this Python running twistd in the foreground."""
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "--nodaemon", "--pidfile=", "mcpws", *arguments]


class _Child(ProcessProtocol):
    def __init__(self, service: WorkersService, index: int) -> None:
        self.service = service
        self.index = index
        self.ended: Deferred[None] = Deferred()

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        self.service.child_ended(self, reason)


class WorkersService(Service):
    """Runs ``count`` children with ``command`` and keeps them running."""

    def __init__(self, reactor: Any, command: Sequence[str], count: int, stop_timeout: float) -> None:
        """
        :param reactor: an ``IReactorProcess`` and ``IReactorTime``.
        :param stop_timeout: seconds children may take to drain after SIGTERM
            before they are killed.
        """
        self.process_reactor: IReactorProcess = reactor
        self.clock: IReactorTime = reactor
        self.command = list(command)
        self.count = count
        self.stop_timeout = stop_timeout
        self.children: dict[int, _Child] = {}
        self.started_at: dict[int, float] = {}
        self.restart_delay: dict[int, float] = {}
        self.pending: dict[int, IDelayedCall] = {}

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # Twisted's Service, unannotated
        for index in range(1, self.count + 1):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        self.pending.pop(index, None)
        child = _Child(self, index)
        command = [argument.replace(WORKER_NUMBER, str(index)) for argument in self.command]
        # Children write their logs where the parent writes its own.
        transport = self.process_reactor.spawnProcess(
            child, command[0], command, env=os.environ.copy(), childFDs={0: "w", 1: 1, 2: 2})
        transport.closeStdin()
        self.children[index] = child
        self.started_at[index] = self.clock.seconds()
        log.info("Started worker {index} (pid {pid})", index=index, pid=transport.pid)

    def child_ended(self, child: _Child, reason: Failure) -> None:
        index = child.index
        if self.children.get(index) is not child:
            return
        del self.children[index]
        status = "exited normally" if reason.check(ProcessDone) else reason.getErrorMessage()
        if not self.running:
            log.info("Worker {index} stopped: {status}", index=index, status=status)
            return
        ran = self.clock.seconds() - self.started_at[index]
        delay = 0.0 if ran >= HEALTHY_RUN else min(max(2 * self.restart_delay.get(index, 0.0), 1.0),
                                                   MAX_RESTART_DELAY)
        self.restart_delay[index] = delay
        log.warn("Worker {index} died ({status}) after {ran:.1f} s; starting it again in {delay:g} s",
                 index=index, status=status, ran=ran, delay=delay)
        self.pending[index] = self.clock.callLater(delay, self._spawn, index)

    def stopService(self) -> Deferred[Any]:
        super().stopService()  # type: ignore[no-untyped-call]  # Twisted's Service, unannotated
        for call in self.pending.values():
            call.cancel()
        self.pending.clear()
        children = list(self.children.values())
        for child in children:
            self._signal(child, signal.SIGTERM)
        log.info("Stopping {count} workers", count=len(children))
        ended = DeferredList([child.ended for child in children])

        def kill_stragglers() -> None:
            for child in list(self.children.values()):
                log.warn("Worker {index} still running after {timeout:g} s: killing it",
                         index=child.index, timeout=self.stop_timeout)
                self._signal(child, signal.SIGKILL)

        deadline = self.clock.callLater(self.stop_timeout, kill_stragglers)
        return ended.addBoth(lambda result: deadline.cancel() if deadline.active() else None)

    @staticmethod
    def _signal(child: _Child, number: int) -> None:
        with contextlib.suppress(ProcessExitedAlready):
            child.transport.signalProcess(number)  # type: ignore[union-attr]  # set by spawnProcess

"""``--workers``: the parent's bookkeeping on a ``task.Clock`` with fake
processes (the real processes are in test_scale_processes.py)."""

from __future__ import annotations

import signal
from typing import Any

from twisted.internet import task
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.python.failure import Failure

from mcp_twisted.workers import WorkersService, child_arguments, twistd_command


class FakeProcess:
    def __init__(self, protocol: Any, pid: int, args: list[str]) -> None:
        self.protocol = protocol
        self.pid = pid
        self.args = args
        self.signals: list[int] = []
        protocol.makeConnection(self)

    def closeStdin(self) -> None:
        pass

    def signalProcess(self, number: int) -> None:
        self.signals.append(number)

    def end(self, reason: Exception) -> None:
        self.protocol.processEnded(Failure(reason))


class ProcessClock(task.Clock):
    """A clock that also spawns fake processes."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[FakeProcess] = []

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], env: Any = None,
                     childFDs: Any = None) -> FakeProcess:
        process = FakeProcess(protocol, 1000 + len(self.spawned), args)
        self.spawned.append(process)
        return process


def test_children_get_the_parents_arguments_with_reuse_port_and_without_workers():
    assert child_arguments(["--workers", "4", "--app", "m:s", "--workers=2", "-e", "tcp:8080"]) == [
        "--app", "m:s", "-e", "tcp:8080", "--reuse-port"]
    assert child_arguments(["--reuse-port", "--workers", "2"]) == ["--reuse-port"]
    assert twistd_command(["--reuse-port"])[-4:] == ["--nodaemon", "--pidfile=", "mcpws", "--reuse-port"]


def test_a_child_that_dies_is_started_again_after_a_pause_that_grows_while_it_dies_young():
    clock = ProcessClock()
    service = WorkersService(clock, ["twistd", "--metrics-endpoint", "tcp:910{worker}"], 2, stop_timeout=30)
    service.startService()
    assert [process.args[-1] for process in clock.spawned] == ["tcp:9101", "tcp:9102"]
    clock.spawned[0].end(ProcessTerminated(signal=signal.SIGKILL))
    clock.advance(0.9)
    assert len(clock.spawned) == 2
    clock.advance(0.1)
    assert len(clock.spawned) == 3 and set(service.children) == {1, 2}
    assert clock.spawned[2].args[-1] == "tcp:9101"  # the same number, so the same port
    clock.spawned[2].end(ProcessTerminated(exitCode=1))  # dies young again: 2 s
    clock.advance(1.9)
    assert len(clock.spawned) == 3
    clock.advance(0.1)
    assert len(clock.spawned) == 4
    clock.advance(60)  # a healthy run: the next restart is immediate
    clock.spawned[3].end(ProcessTerminated(exitCode=1))
    clock.advance(0)
    assert len(clock.spawned) == 5


def test_stop_forwards_sigterm_waits_and_kills_stragglers_after_the_timeout():
    clock = ProcessClock()
    service = WorkersService(clock, ["twistd"], 2, stop_timeout=30)
    service.startService()
    first, second = clock.spawned
    first.end(ProcessTerminated(exitCode=1))  # a restart is pending...
    stopped = service.stopService()
    clock.advance(5)
    assert len(clock.spawned) == 2  # ...and cancelled by the stop
    assert second.signals == [signal.SIGTERM]
    assert not stopped.called
    clock.advance(25)
    assert second.signals == [signal.SIGTERM, signal.SIGKILL]
    second.end(ProcessTerminated(signal=signal.SIGKILL))
    assert stopped.called


def test_stop_is_done_when_every_child_has_drained():
    clock = ProcessClock()
    service = WorkersService(clock, ["twistd"], 2, stop_timeout=30)
    service.startService()
    stopped = service.stopService()
    for process in clock.spawned:
        assert process.signals == [signal.SIGTERM]
        process.end(ProcessDone(0))
    assert stopped.called and not clock.getDelayedCalls()

"""The zygote: one per generation of workers, it holds that generation's PRELOAD modules and forks its workers.

    master ──(socketpair)── zygote of generation N     imports PRELOAD afresh, gc.freeze(), then serves:
      │                        └─ intermediate             forked per request; forks the worker, exits at once
      └─ worker (adopted)  <────────┘                      re-parented to the master, a child subreaper

The master never imports PRELOAD itself (where it can be a child subreaper: Linux), so that a reload
(HUP) starts a new zygote whose fresh import is the new code on disk, while the old generation's
workers finish their jobs on the old code. The workers of one generation share their zygote's
preloaded pages, as they shared the master's before. A worker is the master's child, as without a
zygote: the master reaps it, signals it and measures it, and the worker dies with the master
(PR_SET_PDEATHSIG, set once the master is its parent: set earlier, it would fire when the
intermediate exits).

The protocol, one JSON object per datagram (SOCK_SEQPACKET keeps the boundaries):
zygote -> master once: {"ready": true} or {"error": "<the PRELOAD import's ConfigError>"};
master -> zygote: a SpawnRequest, with the worker's report pipe (write end) attached (SCM_RIGHTS);
zygote -> master: {"pid": <worker pid>} or {"error": "..."}. The master's closing its end stops the
zygote. Every wait of the master on a zygote is bounded: a dead or stuck zygote is a ZygoteError.

The zygote keeps the stop signals blocked (the master blocks them across its fork): its life is the
master's to end, by closing the socket or by dying. A worker unblocks them once its handlers are in
place, as a worker forked by the master does.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import logging
import os
import signal
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from workerd.config import import_failure
from workerd.errors import ConfigError, ExitCode, WorkerdError
from workerd.process import LIBC, STOP_SIGNALS, die_with_parent, set_title
from workerd.settings import Settings

log = logging.getLogger("workerd.zygote")

_PR_SET_CHILD_SUBREAPER = 36
# A zygote imports PRELOAD before it says it is ready: the master waits this long (the master's
# loop stands still meanwhile, as it did while the master imported PRELOAD itself).
READY_TIMEOUT_S = 60.0
# Two forks and a reply: milliseconds. Past this the zygote is stuck, and is killed.
SPAWN_TIMEOUT_S = 5.0
# A worker waits this long for its intermediate parent to exit (it does so at once).
ADOPTION_TIMEOUT_S = 5.0
_MAX_MESSAGE_BYTES = 65536


class ZygoteError(WorkerdError):
    """A zygote that died, did not answer in time, or could not fork a worker."""


def import_preloaded(module: str, settings: Settings) -> float:
    """Import one PRELOAD module; returns the milliseconds it took. A failure is a ConfigError."""
    started = time.monotonic()
    try:
        importlib.import_module(module)
    except (Exception, SystemExit) as exc:  # sys.exit() in a PRELOAD module is a config error too
        raise ConfigError(
            f"PRELOAD module '{module}' {import_failure(exc)} (is it on --path / PATH = {settings.path}?)"
        ) from exc
    return (time.monotonic() - started) * 1000


def become_subreaper() -> bool:
    """Make this process the parent of its orphaned descendants (Linux PR_SET_CHILD_SUBREAPER)."""
    prctl = getattr(LIBC, "prctl", None)
    return prctl is not None and prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


@dataclass(frozen=True)
class SpawnRequest:
    """What the master asks its zygote for: one worker of a group, with the workers it replaces."""

    group: str
    name: str
    predecessors: list[tuple[str, str | None]]

    def encode(self) -> bytes:
        return json.dumps({"group": self.group, "name": self.name, "predecessors": self.predecessors}).encode()

    @classmethod
    def decode(cls, data: bytes) -> SpawnRequest:
        raw = json.loads(data)
        return cls(str(raw["group"]), str(raw["name"]), [(str(n), r) for n, r in raw["predecessors"]])


# The body of a worker, in the process the zygote forked for it: never returns.
BecomeWorker = Callable[[SpawnRequest, int], NoReturn]


@dataclass
class Zygote:
    """The master's handle on one zygote."""

    pid: int
    generation: int
    sock: socket.socket

    def spawn(self, request: SpawnRequest, report_fd: int) -> int:
        """The pid of a new worker (a child of the master), or ZygoteError."""
        try:
            socket.send_fds(self.sock, [request.encode()], [report_fd])
        except OSError as exc:
            raise ZygoteError(f"cannot reach the zygote of generation {self.generation}: {exc}") from None
        return int(self._receive("pid", SPAWN_TIMEOUT_S))

    def wait_ready(self) -> None:
        """Return once its PRELOAD is imported; ConfigError if an import failed, ZygoteError if it died."""
        self._receive("ready", READY_TIMEOUT_S)

    def stop(self) -> None:
        """Close the master's end: the zygote exits (the master reaps it)."""
        self.sock.close()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.stop()

    def _receive(self, key: str, timeout_s: float) -> Any:
        this = f"the zygote of generation {self.generation}"
        self.sock.settimeout(timeout_s)
        try:
            data = self.sock.recv(_MAX_MESSAGE_BYTES)
        except TimeoutError:
            raise ZygoteError(f"{this} did not answer within {timeout_s:g} s") from None
        except OSError as exc:
            raise ZygoteError(f"{this} is gone: {exc}") from None
        if not data:
            raise ZygoteError(f"{this} exited")
        reply = json.loads(data)
        if key in reply:
            return reply[key]
        if key == "ready":  # its PRELOAD import failed
            raise ConfigError(str(reply["error"]))
        raise ZygoteError(f"{this}: {reply['error']}")


def start(settings: Settings, generation: int, prepare: Callable[[], None], become_worker: BecomeWorker) -> Zygote:
    """Fork the zygote of a generation and wait until it has imported PRELOAD.

    `prepare` runs first in the zygote: it leaves the master's state (fds, signal handlers) behind.
    An import that fails is the ConfigError the same import raises at start-up; the zygote is reaped."""
    master_sock, zygote_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    master_pid = os.getpid()
    # Blocked across fork() and for the zygote's life; see the module's docstring.
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    pid = os.fork()
    if pid == 0:
        master_sock.close()
        _zygote_main(zygote_sock, settings, generation, master_pid, prepare, become_worker)
    signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
    zygote_sock.close()
    zygote = Zygote(pid, generation, master_sock)
    try:
        zygote.wait_ready()
    except (ConfigError, ZygoteError):
        zygote.kill()
        os.waitpid(pid, 0)  # it is SIGKILLed: this returns at once
        raise
    log.info("master: zygote %d of generation %d ready (PRELOAD: %s)", pid, generation, ", ".join(settings.preload))
    return zygote


def _zygote_main(sock: socket.socket, settings: Settings, generation: int, master_pid: int,
                 prepare: Callable[[], None], become_worker: BecomeWorker) -> NoReturn:  # fmt: skip
    code = int(ExitCode.SOFTWARE)
    try:
        die_with_parent(master_pid)
        prepare()
        set_title(f"zygote of generation {generation}")
        try:
            for module in settings.preload:
                took_ms = import_preloaded(module, settings)
                log.info("zygote %d: preloaded %s in %.0f ms", os.getpid(), module, took_ms)
        except ConfigError as exc:
            sock.send(json.dumps({"error": str(exc)}).encode())
            os._exit(int(exc.exit_code))
        # As the master did before forking: a collection in a worker would otherwise write to (and
        # so un-share) every preloaded object's page.
        gc.freeze()
        sock.send(json.dumps({"ready": True}).encode())
        _serve(sock, become_worker)
        code = int(ExitCode.OK)
    except BaseException:
        log.error("zygote %d crashed:\n%s", os.getpid(), traceback.format_exc())
    finally:
        os._exit(code)


def _serve(sock: socket.socket, become_worker: BecomeWorker) -> None:
    """Answer the master's spawn requests until it closes its end."""
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(sock, _MAX_MESSAGE_BYTES, 1)
        except ConnectionError:
            return
        if not data:
            return
        reply: dict[str, int | str]
        try:
            reply = {"pid": _fork_adopted_worker(sock, SpawnRequest.decode(data), fds[0], become_worker)}
        except OSError as exc:
            reply = {"error": f"cannot fork a worker: {exc}"}
        finally:
            for fd in fds:
                os.close(fd)
        sock.send(json.dumps(reply).encode())


def _fork_adopted_worker(sock: socket.socket, request: SpawnRequest, report_fd: int,
                         become_worker: BecomeWorker) -> int:  # fmt: skip
    """Fork an intermediate that forks the worker and exits, so that the worker is re-parented to
    the master (the subreaper); returns the worker's pid, as the intermediate wrote it."""
    pid_read, pid_write = os.pipe()
    intermediate = os.fork()
    if intermediate == 0:
        code = 1
        try:
            os.close(pid_read)
            worker = os.fork()
            if worker == 0:
                os.close(pid_write)
                sock.close()
                become_worker(request, report_fd)
            os.write(pid_write, str(worker).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(pid_write)
    try:
        written = os.read(pid_read, 64)
    finally:
        os.close(pid_read)
        os.waitpid(intermediate, 0)
    if not written:
        raise OSError("the intermediate process could not fork the worker")
    return int(written)


def wait_for_adoption(master_pid: int) -> None:
    """In a worker the zygote forked: wait until the master is the parent, then die with it."""
    deadline = time.monotonic() + ADOPTION_TIMEOUT_S
    while os.getppid() != master_pid:
        if time.monotonic() > deadline:  # the master died before adopting us: we were re-parented to init
            os._exit(1)
        time.sleep(0.001)
    die_with_parent(master_pid)  # and that checks getppid() again, after the prctl: the master's death in between

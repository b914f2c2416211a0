"""Process-level helpers: titles, and dying with the parent."""

from __future__ import annotations

import ctypes
import os
import signal

import setproctitle

_PR_SET_PDEATHSIG = 1
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGQUIT})
# The signals only a master acts on: HUP reload, TTIN/TTOU resize, USR1 reopen the log file.
# `systemctl kill -s SIG` and `kill -- -PGID` deliver them to every process of the pool, where their
# default action would kill (HUP, USR1) or stop (TTIN, TTOU) it: every other process ignores them.
MASTER_SIGNALS = (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1)


def _ignore(signum: int, frame: object) -> None:
    """A handler, not SIG_IGN: a handler is reset to the default by exec(), so programs a job runs get
    the usual dispositions (SIG_IGN would be inherited, as with nohup)."""


def ignore_master_signals() -> None:
    """For every process but the master: survive the master's signals (see MASTER_SIGNALS).

    A worker's or a horse's log file needs no reopening signal: workerd's file handler is a
    WatchedFileHandler, which reopens a rotated file at its next line."""
    for signum in MASTER_SIGNALS:
        signal.signal(signum, _ignore)


def set_title(title: str) -> None:
    setproctitle.setproctitle(f"workerd: {title}")


# The C library's symbols, looked up once here rather than in every horse: CDLL(None) is the
# running program, which links libc (ctypes.util.find_library would run ldconfig: ~3 ms a fork).
LIBC = ctypes.CDLL(None, use_errno=True)


def die_with_parent(expected_parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux PR_SET_PDEATHSIG).

    The parent may already have died between fork() and prctl(); then getppid() no longer returns
    it (we were re-parented to init or a subreaper), and we leave at once.
    """
    prctl = getattr(LIBC, "prctl", None)
    if prctl is not None:  # Linux only; elsewhere the getppid() check below is all there is
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != expected_parent_pid:
        os._exit(1)


def describe_wait_status(status: int) -> str:
    """'killed by signal 9 (SIGKILL)' or 'exit code 3', from a waitpid status."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"killed by signal {number} ({name})"
    if os.WIFEXITED(status):
        return f"exit code {os.WEXITSTATUS(status)}"
    return f"wait status {status}"

"""Job functions for the reliability tests (outages, bad input, untrusted Redis).

Executions are recorded in a file, not in Redis, so that a job records itself even while Redis is
down: one line per event, appended with O_APPEND (whole lines even with several processes).
"""

from __future__ import annotations

import os
import signal
import sys
import time

NOT_CALLABLE = 42


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def record(path: str, tag: str, seconds: float = 0.0) -> str:
    """Append 'start <tag> <pid>', sleep, append 'end <tag> <pid>'."""
    _append(path, f"start {tag} {os.getpid()} {time.time():.3f}")
    time.sleep(seconds)
    _append(path, f"end {tag} {os.getpid()} {time.time():.3f}")
    return tag


def big_result(mib: int) -> bytes:
    return b"x" * (mib * 1024 * 1024)


def close_stdio() -> str:
    """Close the process's stdout and stderr, at the file-descriptor level too."""
    sys.stdout.close()
    sys.stderr.close()
    os.close(1)
    os.close(2)
    return "closed"


def chdir_and_trap_signals(directory: str) -> str:
    """Change the working directory and replace the stop-signal handlers with ones that ignore."""
    os.chdir(directory)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_IGN)
    return os.getcwd()


def getcwd() -> str:
    return os.getcwd()


def add(a: int, b: int) -> int:
    return a + b

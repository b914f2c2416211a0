"""Example jobs for the demo (scripts/demo.sh)."""

import time


def add(a: int, b: int) -> int:
    return a + b


def word_count(text: str) -> int:
    return len(text.split())


def slow_square(n: int, seconds: float = 0.2) -> int:
    time.sleep(seconds)
    return n * n


def fail(message: str) -> None:
    raise ValueError(message)

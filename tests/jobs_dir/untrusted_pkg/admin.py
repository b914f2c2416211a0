"""Functions that are not meant to be reachable from the queue: running one leaves a marker file."""

import os
from pathlib import Path


def wipe(*args: object) -> None:
    Path(os.environ["UNTRUSTED_MARKERS"], "wipe").touch()

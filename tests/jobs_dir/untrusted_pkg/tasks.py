"""An allowed task module that imports what task modules do: each import is a bypass to refuse."""

import os
import subprocess
from os import system

from untrusted_pkg.admin import wipe

open_file = open  # a builtin kept under a module name

__all__ = ["echo", "open_file", "os", "subprocess", "system", "wipe"]


def echo(value: object) -> object:
    return value

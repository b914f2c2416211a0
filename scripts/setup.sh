#!/usr/bin/env bash
# Set up everything workerd's demo and tests need, on a fresh machine: redis-server (from the
# distribution's packages when missing) and a virtualenv in .venv with workerd and its test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing redis-server with apt-get" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "setup: redis-server is missing. Install it, e.g. 'sudo apt-get install redis-server'" \
         "(Debian/Ubuntu), 'sudo dnf install redis' (Fedora) or 'brew install redis' (macOS)." >&2
    exit 1
  fi
fi

# The TLS test makes its certificates with openssl.
if ! command -v openssl >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing openssl with apt-get" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
  else
    echo "setup: openssl is missing (the TLS test needs it). Install the 'openssl' package." >&2
    exit 1
  fi
fi

# The packaging tests build a .deb (debhelper) and an .rpm, lint them, and run logrotate: their
# tools come from the distribution too (packaging/Makefile's PACKAGING_APT_DEPS). Without root,
# the tests name what to install.
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1 && [ -f packaging/Makefile ]; then
  missing=""
  for tool in dpkg-buildpackage dh dh_installsystemd rpmbuild rpmspec rpmlint help2man groff lintian \
              systemd-analyze logrotate gcc; do
    command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
  done
  if [ -n "$missing" ]; then
    echo "setup: installing packaging tools (missing:$missing)" >&2
    make -s -f packaging/Makefile deps >/dev/null
  fi
fi

# PYTHON picks the interpreter, VENV the virtualenv (scripts/test.sh makes one per Python it tests).
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
"$VENV/bin/python" -m pip install -q -e '.[test]'
# workerd is installed in editable mode, so its modules are compiled where they live. Where the
# environment sets PYTHONDONTWRITEBYTECODE (this machine's does), nothing writes their bytecode and
# every process compiles them again: a third of a `workerd --burst` run's CPU (0.6 -> 0.4 s), in a
# suite that starts workerd hundreds of times. Compile them once; Python reads the .pyc either way.
"$VENV/bin/python" -m compileall -q workerd tests >/dev/null
echo "setup: ready ($(redis-server --version | cut -d' ' -f3), $("$VENV/bin/python" --version) in $VENV)" >&2

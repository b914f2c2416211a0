#!/usr/bin/env bash
# Print the oldest and the newest supported Python this machine has, one interpreter path a line
# (one line when only one is found), and say on stderr which supported versions were not found.
# Looks in pyenv's versions ($PYENV_ROOT, default ~/.pyenv), then on PATH (python3.X).
set -euo pipefail
supported="3.10 3.11 3.12 3.13"
found=()
missing=()
for version in $supported; do
  interpreter=""
  # pyenv's own builds first: its shims on PATH answer "command not found" for versions not selected.
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/python"$version"; do
    [ -x "$candidate" ] && interpreter=$candidate
  done
  if [ -z "$interpreter" ] && command -v "python$version" >/dev/null 2>&1 \
      && "python$version" -c 'import sys' >/dev/null 2>&1; then
    interpreter=$(command -v "python$version")
  fi
  if [ -n "$interpreter" ]; then found+=("$interpreter"); else missing+=("$version"); fi
done
if [ ${#found[@]} -eq 0 ]; then
  echo "pythons: no supported Python ($supported) found; install one, e.g. 'apt-get install python3'" >&2
  exit 1
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "pythons: not found on this machine: ${missing[*]} (pyenv install X.Y adds one)" >&2
fi
printf '%s\n' "${found[0]}"
if [ ${#found[@]} -gt 1 ]; then printf '%s\n' "${found[-1]}"; fi

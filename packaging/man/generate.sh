#!/bin/sh
# Regenerate packaging/man/workerd.1 with help2man: OPTIONS (and the description) from
# `workerd --help` of this repository, everything else from workerd.h2m beside this file.
#
#   packaging/man/generate.sh [PYTHON]     (default: the repository's .venv/bin/python)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$(dirname "$here")")
python=${1:-$repo/.venv/bin/python}
command -v help2man >/dev/null || {
    echo "$0: help2man not found (run: make -f packaging/Makefile deps)" >&2
    exit 1
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
# help2man runs a program: a shim that runs this repository's CLI, not an installed one.
# The --help output minus argparse's usage block (up to the first blank line), which
# help2man would put in DESCRIPTION: workerd.h2m has a short SYNOPSIS instead.
cat > "$tmp/workerd" <<SHIM
#!/bin/sh
cd "$repo"
PYTHONPATH="$repo" "$python" -c 'import sys
sys.argv[0] = "workerd"
from workerd.cli import main
main()' "\$@" | sed '/^usage:/,/^\$/d'
SHIM
chmod +x "$tmp/workerd"
"$tmp/workerd" --help >/dev/null   # fail here, with its traceback, if --help is broken

version=$("$tmp/workerd" --version | sed 's/^workerd //')
# A fixed date (the last commit's) keeps the page stable between regenerations.
SOURCE_DATE_EPOCH=$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)
export SOURCE_DATE_EPOCH
help2man --no-info --section=1 --manual="User Commands" --source="workerd $version" \
    --name="supervised worker daemon for RQ-compatible Redis job queues" \
    --include="$here/workerd.h2m" --output="$tmp/workerd.1" "$tmp/workerd"
# help2man names the shim's path in places; it is "workerd" to a reader.
sed -i "s|$tmp/||g" "$tmp/workerd.1"
cp "$tmp/workerd.1" "$here/workerd.1"
echo "$here/workerd.1"

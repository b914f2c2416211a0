#!/bin/sh
# Build workerd's private virtualenv into a staging root, ready to be installed at PREFIX.
#
#   packaging/build-venv.sh STAGE_ROOT [PREFIX]       (PREFIX defaults to /opt/workerd)
#
# Result: STAGE_ROOT/PREFIX is a virtualenv holding workerd and its dependencies, that
# works once copied to PREFIX, and also from wherever it is unpacked (the tests run it
# from a temporary root). How, given that a virtualenv normally hard-codes its path:
#
# - bin/python is a symlink to the system interpreter (/usr/bin/python3.X, resolved, so
#   a later change of the distribution's default python3 does not swap it underneath).
#   Python finds the venv from the *unresolved* path of bin/python (pyvenv.cfg next to
#   bin/), so it uses the right site-packages wherever the tree lies.
# - Console scripts (bin/workerd, ...) are sh scripts instead of python files starting
#   "#!/abs/path/bin/python": they exec the python next to them (after resolving the
#   /usr/bin/workerd symlink) on the same entry point pip's script would have called.
# - Bytecode is compiled with the installed path (PREFIX) recorded in it, so
#   tracebacks name /opt/workerd/..., not the build directory.
# - pip and setuptools are removed: the package owns this tree; application code is
#   added with PYTHONPATH (see docs/PACKAGING.md), not by pip-installing into it.
# - bin/ holds workerd's own entry points and the python links, nothing else: the
#   console scripts of dependencies (python-dotenv's "dotenv") are not ours to ship.
# - The C extensions whose manylinux wheels are linked without "-z now" (lintian's
#   hardening-no-bindnow) are compiled here from their sources, with the CFLAGS and
#   LDFLAGS the package build exports (dpkg-buildflags with hardening=+all in
#   debian/rules; the distribution's flags in rpmbuild). pydantic-core (Rust) keeps its
#   wheel: it is already linked with BIND_NOW. pip's wheel cache (PIP_CACHE_DIR) makes a
#   second build reuse the compiled wheels.
#
# Environment: PYTHON (interpreter to base the venv on, default /usr/bin/python3),
# SRC (the workerd source tree, default: this repository), PIP_ARGS (extra pip args),
# FROM_SOURCE (comma-separated packages to compile, default: the list below; "" for none).
set -eu

FROM_SOURCE=${FROM_SOURCE-psutil,setproctitle,hiredis}

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 STAGE_ROOT [PREFIX]" >&2
    exit 2
fi
stage=$(cd "$1" && pwd)
prefix=${2:-/opt/workerd}
here=$(cd "$(dirname "$0")" && pwd)
src=${SRC:-$(dirname "$here")}
python=$(readlink -f "${PYTHON:-/usr/bin/python3}")
venv=$stage$prefix

if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
    echo "$0: $python cannot create virtualenvs (on Debian: apt-get install python3-venv;" \
         "or run: make -f packaging/Makefile deps)" >&2
    exit 1
fi
if [ -e "$venv" ]; then
    echo "$0: $venv already exists" >&2
    exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

# Build from a copy of the sources, so that setuptools' build/ and *.egg-info
# never land in the working tree.
mkdir "$tmp/src"
for f in pyproject.toml README.md LICENSE workerd; do
    if [ -e "$src/$f" ]; then cp -R "$src/$f" "$tmp/src/"; fi
done
# pyproject.toml names README.md as the long description; a checkout always has it,
# a partial tree might not.
[ -e "$tmp/src/README.md" ] || echo "workerd" > "$tmp/src/README.md"
find "$tmp/src" -name __pycache__ -type d -prune -exec rm -rf {} +

mkdir -p "$(dirname "$venv")"
"$python" -m venv "$venv"
# shellcheck disable=SC2086
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-warn-script-location ${FROM_SOURCE:+--no-binary "$FROM_SOURCE"} ${PIP_ARGS:-} "$tmp/src"
"$venv/bin/python" -m pip uninstall --quiet --yes pip setuptools >/dev/null 2>&1 || true
# bin/ keeps the python links and workerd's own console scripts (named by its metadata).
# Everything else goes: dependencies' tools (dotenv), pip's leftovers, and the activate
# scripts (interactive use only; they hard-code the path).
ours=$("$venv/bin/python" -c 'from importlib.metadata import distribution
print(" ".join(e.name for e in distribution("workerd").entry_points if e.group == "console_scripts"))')
for script in "$venv"/bin/*; do
    case " $ours " in *" $(basename "$script") "*) continue ;; esac
    [ -L "$script" ] || rm -f "$script"
done
# direct_url.json records the temporary source directory of this build.
find "$venv/lib" -path '*.dist-info/direct_url.json' -delete

# Replace every console script (a python file whose shebang names this venv's python)
# by a small sh script that runs the same entry point with the python next to it.
safe_path=$("$venv/bin/python" -c 'import sys; print("-P" if sys.version_info >= (3, 11) else "")')
for script in "$venv"/bin/*; do
    [ -f "$script" ] && [ ! -L "$script" ] || continue
    case "$(head -n 1 "$script")" in
        "#!$venv/bin/python"*) ;;
        *) continue ;;
    esac
    # pip writes "from MODULE import FUNC" for an entry point "MODULE:FUNC".
    entry=$(sed -n 's/^from \([A-Za-z0-9_.]*\) import \([A-Za-z0-9_]*\)$/\1 \2/p' "$script" | head -n 1)
    if [ -z "$entry" ]; then
        echo "$0: cannot find the entry point in $script" >&2
        exit 1
    fi
    module=${entry% *}
    func=${entry#* }
    cat > "$script" <<SCRIPT
#!/bin/sh
# Entry point $module:$func, written by workerd's packaging/build-venv.sh.
# Runs the python of the virtualenv this script lies in, found from the script's
# own resolved path, so the tree works wherever it is installed or unpacked.
# exec: the python process keeps this process id (systemd's MAINPID).
bin=\$(dirname -- "\$(readlink -f -- "\$0")")
exec "\$bin/python" $safe_path -c 'import sys
del sys.argv[0]
from $module import $func
sys.exit($func())' "\$0" "\$@"
SCRIPT
done

# Compiled extensions from wheels often keep their symbol tables; strip them as
# distributions do (debugging symbols are of no use without the sources).
if command -v strip >/dev/null; then
    find "$venv/lib" -name '*.so' -type f -exec strip --strip-unneeded \
        --remove-section=.comment --remove-section=.note {} +
fi
# Some wheels mark plain modules executable; only the bin/ scripts should be.
find "$venv/lib" -type f ! -name '*.so' ! -name '*.so.*' -perm /111 -exec chmod a-x {} +
# ...and some keep a "#!" line on library modules (prometheus_client): not scripts, so no shebang.
find "$venv/lib" -type f -name '*.py' -exec grep -l -m1 '^#!' {} + 2>/dev/null \
    | while read -r module; do
        if head -n1 "$module" | grep -q '^#!'; then sed -i '1d' "$module"; fi
    done
# The venv's include/ directory stays empty (no package installs C headers).
rmdir "$venv"/include/python* "$venv/include" 2>/dev/null || true

# pyvenv.cfg's "command" line records how the venv was made, build path included.
sed -i "s|$venv|$prefix|g" "$venv/pyvenv.cfg"

# Recompile all bytecode with the final path in it (-s strips the staging root).
find "$venv" -name __pycache__ -type d -prune -exec rm -rf {} +
"$venv/bin/python" -m compileall -q -j 0 -s "$stage" -p / "$venv/lib" >/dev/null

if grep -rIl --exclude='*.pyc' -- "$stage" "$venv" >"$tmp/leaks"; then
    echo "$0: the staging path is still recorded in:" >&2
    cat "$tmp/leaks" >&2
    exit 1
fi
echo "$0: built $venv (python $("$venv/bin/python" -c 'import sys; print(sys.version.split()[0])'))"

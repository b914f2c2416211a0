#!/bin/sh
# Build the workerd .deb with debhelper (dpkg-buildpackage, dh).
#
#   packaging/debian/build-deb.sh [OUT_DIR]        (default OUT_DIR: dist/)
#
# Debian's tools want the packaging in debian/ at the top of a source tree: this script
# copies the repository's working tree (committed or not) and this directory there,
# writes debian/changelog from pyproject's version, and runs dpkg-buildpackage -b.
# Prints the path of the .deb on its last line; lintian is run afterwards if installed
# (LINTIAN=0 skips it). Needs: dpkg-dev, debhelper, python3-venv, python3-dev, gcc
# (make -f packaging/Makefile deps). Environment: DEB_REVISION (default 1),
# DEB_MAINTAINER, PYTHON (see build-venv.sh), PIP_ARGS, FROM_SOURCE.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
pkgdir=$(dirname "$here")              # packaging/
repo=$(dirname "$pkgdir")
out=${1:-$repo/dist}
mkdir -p "$out"
out=$(cd "$out" && pwd)

for tool in dpkg-buildpackage dh dh_installsystemd; do
    command -v "$tool" >/dev/null || {
        echo "$0: $tool not found (apt-get install debhelper, or: make -f packaging/Makefile deps)" >&2
        exit 1
    }
done

upstream=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
    "$repo/pyproject.toml")
version="$upstream-${DEB_REVISION:-1}"
maintainer=${DEB_MAINTAINER:-workerd developers <workerd@example.org>}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM
src=$work/workerd-$upstream
mkdir "$src"
# What the package is built from; the top-level Makefile stays out (dh would run it).
(cd "$repo" && tar -cf - --exclude=__pycache__ --exclude='*.egg-info' \
    pyproject.toml README.md CHANGELOG.md workerd packaging docs \
    tests/rq_suite/out_of_scope.txt tests/rq_suite/known_failures.txt \
    $(ls LICENSE 2>/dev/null)) | tar -xf - -C "$src"
cp -R "$here" "$src/debian"
rm "$src/debian/build-deb.sh"
cp "$pkgdir/logrotate/workerd" "$src/debian/workerd.logrotate"
# A native package's changelog, generated; the real history is the upstream
# CHANGELOG.md (installed as changelog.gz by dh_installchangelogs).
{
    echo "workerd ($version) unstable; urgency=medium"
    echo
    echo "  * Package built from the workerd repository; see changelog.gz."
    echo
    echo " -- $maintainer  $(date -R -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}")"
} > "$src/debian/changelog"

# -b: binary only; -us -uc: unsigned. dpkg-checkbuilddeps names any missing
# build dependency (debian/control).
(cd "$src" && dpkg-buildpackage -b -us -uc >"$work/build.log" 2>&1) || {
    tail -n 60 "$work/build.log" >&2
    echo "$0: dpkg-buildpackage failed (log above)" >&2
    exit 1
}
arch=$(dpkg --print-architecture)
deb=$out/workerd_${version}_$arch.deb
mv "$work/workerd_${version}_$arch.deb" "$deb"

if [ "${LINTIAN:-1}" != 0 ] && command -v lintian >/dev/null; then
    echo "lintian:" >&2
    # Report only; the accepted tags are overridden in the package itself, each with
    # its reason (debian/workerd.lintian-overrides, docs/PACKAGING.md).
    lintian --fail-on none --info "$deb" >&2 || true
fi
echo "$deb"

#!/bin/sh
# Build the workerd .deb from this repository with dpkg-deb, no debhelper needed.
#
#   packaging/debian/build-deb.sh [OUT_DIR]        (default OUT_DIR: dist/)
#
# Prints the path of the .deb on its last line. Needs: dpkg-deb, python3-venv, gzip;
# lintian is run afterwards if installed (LINTIAN=0 skips it).
# Environment: DEB_REVISION (default 1), DEB_MAINTAINER, PYTHON (see build-venv.sh).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
pkgdir=$(dirname "$here")              # packaging/
repo=$(dirname "$pkgdir")
out=${1:-$repo/dist}
mkdir -p "$out"
out=$(cd "$out" && pwd)

for tool in dpkg-deb dpkg gzip; do
    command -v "$tool" >/dev/null || {
        echo "$0: $tool not found (run: make -f packaging/Makefile deps)" >&2
        exit 1
    }
done

python=$(readlink -f "${PYTHON:-/usr/bin/python3}")
upstream=$("$python" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
    "$repo/pyproject.toml")
version="$upstream-${DEB_REVISION:-1}"
arch=$(dpkg --print-architecture)
maintainer=${DEB_MAINTAINER:-workerd developers <workerd@example.org>}
pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM
root=$work/root
mkdir -p "$root"

# The application: a private virtualenv in /opt/workerd (see build-venv.sh for why it
# still works when unpacked elsewhere).
PYTHON=$python SRC=$repo sh "$pkgdir/build-venv.sh" "$root" /opt/workerd
# Debian policy: bytecode is not shipped but compiled by postinst (and removed by prerm),
# so that every file dpkg owns is one it installed.
find "$root/opt/workerd" -name __pycache__ -type d -prune -exec rm -rf {} +

install -d "$root/usr/bin"
ln -s /opt/workerd/bin/workerd "$root/usr/bin/workerd"

install -d "$root/lib/systemd/system"
install -m 0644 "$pkgdir/systemd/workerd.service" "$pkgdir/systemd/workerd@.service" \
    "$root/lib/systemd/system/"

# Example settings. Not examples/settings/settings.toml: that one imports the
# repository's example jobs, which are not installed.
install -d "$root/etc/workerd"
install -m 0644 "$pkgdir/example.toml" "$root/etc/workerd/example.toml"

install -d "$root/usr/share/man/man1"
gzip -9n < "$pkgdir/man/workerd.1" > "$root/usr/share/man/man1/workerd.1.gz"
chmod 0644 "$root/usr/share/man/man1/workerd.1.gz"

doc=$root/usr/share/doc/workerd
install -d "$doc/examples"
install -m 0644 "$here/copyright" "$doc/copyright"
for f in README.md docs/PACKAGING.md; do
    if [ -f "$repo/$f" ]; then install -m 0644 "$repo/$f" "$doc/"; fi
done
# Debian's name for the upstream changelog is "changelog" (compressed, as policy asks).
gzip -9nc "$repo/CHANGELOG.md" > "$doc/changelog.gz"
chmod 0644 "$doc/changelog.gz"
install -m 0644 "$pkgdir/cron/workerd-burst.cron" "$doc/examples/workerd-burst.cron"
install -m 0644 "$pkgdir/cron/README" "$doc/examples/README.cron"
# Debian wants a changelog.Debian; ours is generated, the real history is changelog.gz.
date=$(date -R -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}")
{
    echo "workerd ($version) unstable; urgency=medium"
    echo
    echo "  * Package built from the workerd repository; see changelog.gz."
    echo
    echo " -- $maintainer  $date"
} | gzip -9n > "$doc/changelog.Debian.gz"

install -d "$root/usr/share/lintian/overrides"
install -m 0644 "$here/lintian-overrides" "$root/usr/share/lintian/overrides/workerd"

# Control area.
install -d "$root/DEBIAN"
for script in postinst prerm postrm; do
    install -m 0755 "$here/$script" "$root/DEBIAN/$script"
done
echo /etc/workerd/example.toml > "$root/DEBIAN/conffiles"

# The venv's interpreter is /usr/bin/pythonX.Y (a symlink into it), and the compiled
# extensions are linked against the C library: depend on exactly those.
depends="python$pyver, adduser, libc6 (>= $(dpkg-query -W -f='${Version}' libc6 | cut -d- -f1 | cut -d. -f1,2))"
# dpkg-shlibdeps would be more precise, but it cannot resolve the private libraries
# that manylinux wheels bundle (*.libs/ with an $ORIGIN rpath); the build machine's
# libc version is a safe lower bound for everything built or downloaded here.
installed_size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s|@VERSION@|$version|" -e "s|@ARCH@|$arch|" -e "s|@MAINTAINER@|$maintainer|" \
    -e "s|@INSTALLED_SIZE@|$installed_size|" -e "s|@DEPENDS@|$depends|" \
    "$here/control.in" > "$root/DEBIAN/control"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | LC_ALL=C sort \
    | grep -vxF etc/workerd/example.toml | xargs -d '\n' md5sum) > "$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"

deb=$out/workerd_${version}_$arch.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null

if [ "${LINTIAN:-1}" != 0 ] && command -v lintian >/dev/null; then
    echo "lintian:" >&2
    # Report only; the known, accepted tags are overridden in the package itself and
    # listed in docs/PACKAGING.md.
    lintian --fail-on none --info "$deb" >&2 || true
fi
echo "$deb"

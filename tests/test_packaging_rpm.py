"""The .rpm build (slow): a file of its own so that pytest-xdist (--dist loadfile) builds it beside the
.deb of tests/test_packaging.py instead of after it, the two builds being the suite's longest tests."""

from __future__ import annotations

import re

import pytest

from tests.test_packaging import (
    BUILD_S,
    PACKAGING,
    REPO,
    build_env,
    mark_built,
    need,
    need_venv_python,
    package_dir,
    readme_doc_links,
    run,
)


@pytest.mark.slow
def test_rpm_builds(tmp_path_factory: pytest.TempPathFactory) -> None:
    need("rpmbuild")
    need_venv_python()
    out, cached = package_dir(tmp_path_factory, "rpm")
    if not cached:
        result = run(
            ["make", "-f", str(PACKAGING / "Makefile"), "rpm", f"DIST_DIR={out}"],
            timeout=BUILD_S,
            cwd=REPO,
            env=build_env(),
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
        mark_built(out)
    (rpm,) = out.glob("workerd-*.rpm")
    listing = run(["rpm", "-qplv", str(rpm)]).stdout.splitlines()
    modes = {line.split()[-1]: line.split()[:4] for line in listing if " -> " not in line}
    files = set(run(["rpm", "-qpl", str(rpm)]).stdout.split())
    for path in [
        "/opt/workerd/bin/workerd",
        "/usr/bin/workerd",
        "/etc/workerd/example.toml",
        "/etc/logrotate.d/workerd",
        "/usr/lib/systemd/system/workerd@.service",
        "/usr/share/man/man1/workerd.1.gz",
        "/usr/share/doc/workerd/README.md",
    ]:
        assert path in files
    for link in readme_doc_links():
        assert f"/usr/share/doc/workerd/{link}" in files, f"README links {link}, not in the rpm"
    assert not [f for f in files if f.startswith("/opt/workerd/bin/") and f.rsplit("/", 1)[1] == "dotenv"]
    assert modes["/etc/workerd"][0] == "drwxr-s---" and modes["/etc/workerd"][2:4] == ["root", "workerd"]
    assert modes["/etc/workerd/example.toml"][0] == "-rw-r-----"
    requires = run(["rpm", "-qpR", str(rpm)]).stdout
    assert re.search(r"^/usr/bin/python3\.\d+$", requires, re.M), requires
    # No python3.Xdist(...) dependencies derived from the private venv.
    assert "dist(" not in requires
    # The units' scriptlets: %systemd_post / %systemd_preun / %systemd_postun_with_restart.
    scripts = run(["rpm", "-qp", "--scripts", str(rpm)]).stdout
    assert re.search(r"systemctl --no-reload preset workerd\.service workerd@\.service", scripts) or (
        "systemd-update-helper install-system-units" in scripts
    ), scripts
    assert "disable --now workerd.service workerd@\\*.service" in scripts or "remove-system-units" in scripts
    assert "try-restart workerd.service workerd@\\*.service" in scripts or "mark-restart-system-units" in scripts

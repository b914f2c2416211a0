"""Tests of packaging/: the systemd units, the cron example, the man page, the RPM spec,
and (marked slow) the .deb and .rpm builds.

Tools that a test needs and the machine lacks (systemd-analyze, groff, rpmspec,
dpkg-deb, rpmbuild, lintian) make that test skip with the reason; installing them is
`make -f packaging/Makefile deps`, never something a test does.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PACKAGING = REPO / "packaging"
UNITS = {
    "workerd.service": PACKAGING / "systemd" / "workerd.service",
    "workerd@.service": PACKAGING / "systemd" / "workerd@.service",
}
INSTALLED_BINARY = "/opt/workerd/bin/workerd"
# The master's default graceful (warm stop) timeout, when workerd.settings does not say;
# TimeoutStopSec must leave room above it for the horses' own TERM -> KILL escalation.
GRACEFUL_TIMEOUT_DEFAULT_S = 30
# Subprocess bounds: nothing here should take near these; they turn a hang into a failure.
QUICK_S = 60
BUILD_S = 900

EXIT_CODES = {0: "OK", 1: "runtime error", 69: "EX_UNAVAILABLE", 78: "EX_CONFIG"}


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value assigned, in order (systemd keys may repeat).

    Handles what the units use: comments, blank lines, backslash continuations.
    """
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}: {line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not a key=value line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def only(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit.get(section, {}).get(key)
    assert values is not None, f"[{section}] {key}= is missing"
    assert len(values) == 1, f"[{section}] {key}= is set {len(values)} times: {values}"
    return values[0]


def seconds(value: str) -> float:
    """A systemd time span ("90", "90s", "1min 30s") in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "ms": 0.001, "m": 60, "min": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


def run(cmd: list[str], timeout: float = QUICK_S, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (make -f packaging/Makefile deps installs it)")
    return path


def graceful_timeout_default_s() -> float:
    try:
        from workerd.settings import Settings
    except ImportError:
        return GRACEFUL_TIMEOUT_DEFAULT_S
    field = Settings.model_fields.get("graceful_timeout")
    return GRACEFUL_TIMEOUT_DEFAULT_S if field is None else float(field.default)


def project_version() -> str:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["version"]


# --- systemd units ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_has_the_required_directives(name: str) -> None:
    unit = parse_unit(UNITS[name])
    service = unit["Service"]

    assert only(unit, "Service", "Type") == "notify"
    assert only(unit, "Service", "NotifyAccess") == "main"
    # Above the 35 s a single worker's loop may wait on one Redis call (packets dropped): no outage trips it.
    assert seconds(only(unit, "Service", "WatchdogSec")) == 60
    assert only(unit, "Service", "KillMode") == "mixed"
    assert seconds(only(unit, "Service", "TimeoutStopSec")) >= 2 * graceful_timeout_default_s()
    assert only(unit, "Service", "OOMPolicy") == "continue"
    assert only(unit, "Service", "Restart") == "on-failure"
    assert "78" in only(unit, "Service", "RestartPreventExitStatus").split()
    assert only(unit, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert only(unit, "Service", "User") == "workerd"
    assert only(unit, "Service", "Group") == "workerd"

    assert only(unit, "Service", "NoNewPrivileges") == "yes"
    assert only(unit, "Service", "ProtectSystem") == "strict"
    assert only(unit, "Service", "ProtectHome") == "yes"
    assert only(unit, "Service", "PrivateTmp") == "yes"
    writable = [p for value in service["ReadWritePaths"] for p in value.split()]
    assert sorted(writable) == ["/run/workerd", "/var/log/workerd"]
    # Breaks ctypes/cffi callbacks and JITs in jobs; deliberately not used.
    assert "MemoryDenyWriteExecute" not in service

    exec_start = shlex.split(only(unit, "Service", "ExecStart"))
    assert exec_start[0] == INSTALLED_BINARY
    config = exec_start[exec_start.index("-c") + 1]
    if name == "workerd@.service":
        assert config == "/etc/workerd/%i.toml"
    else:
        assert config == "/etc/workerd/workerd.toml"
    assert only(unit, "Install", "WantedBy") == "multi-user.target"


def test_restart_prevent_status_is_the_config_error_exit_codes() -> None:
    errors = pytest.importorskip("workerd.errors")
    unit = parse_unit(UNITS["workerd@.service"])
    prevented = set(only(unit, "Service", "RestartPreventExitStatus").split())
    assert prevented == {str(int(errors.ExitCode.NO_PERMISSION)), str(int(errors.ExitCode.CONFIG))}


def test_the_two_units_differ_only_where_the_instance_name_matters() -> None:
    single = parse_unit(UNITS["workerd.service"])
    template = parse_unit(UNITS["workerd@.service"])
    may_differ = {"Description", "ExecStart", "EnvironmentFile", "RuntimeDirectory"}
    assert single.keys() == template.keys()
    for section in single:
        keys = single[section].keys() | template[section].keys()
        differ = {k for k in keys if single[section].get(k) != template[section].get(k)}
        assert differ <= may_differ, f"[{section}] differs in {sorted(differ - may_differ)}"


def verify(unit_paths: list[Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run(
        [
            need("systemd-analyze"),
            "verify",
            "--man=no",
            "--recursive-errors=no",
            *[str(p) for p in unit_paths],
        ],
        cwd=cwd,
    )


def test_units_pass_systemd_analyze_verify_apart_from_the_uninstalled_binary(tmp_path: Path) -> None:
    """`systemd-analyze verify` on the units as shipped.

    Its one legitimate complaint on a machine without the package is that ExecStart's
    /opt/workerd/bin/workerd does not exist; every other message fails the test. The
    slow test verifies the units again with the binary of a freshly built package.
    """
    copies = []
    for name, path in UNITS.items():
        shutil.copy(path, tmp_path / name)
        copies.append(tmp_path / name)
    # A template is verified through an instance name.
    shutil.copy(UNITS["workerd@.service"], tmp_path / "workerd@app.service")
    copies.append(tmp_path / "workerd@app.service")

    result = verify(copies, tmp_path)
    messages = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    missing_binary = re.compile(
        rf"^workerd(@\w*)?\.service: Command {re.escape(INSTALLED_BINARY)} is not executable: "
        r"No such file or directory$"
    )
    unexpected = [m for m in messages if not missing_binary.match(m)]
    assert unexpected == [], "\n".join(messages)
    if os.access(INSTALLED_BINARY, os.X_OK):
        assert result.returncode == 0, "\n".join(messages)


# --- cron ------------------------------------------------------------------------


def cron_entries() -> list[list[str]]:
    entries = []
    for line in (PACKAGING / "cron" / "workerd-burst.cron").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or re.match(r"^[A-Z_]+=", line):
            continue
        entries.append(line.split())
    return entries


def test_cron_line_runs_burst_mode_under_flock_as_the_service_user() -> None:
    (entry,) = cron_entries()
    schedule, user, command = entry[:5], entry[5], entry[6:]
    assert schedule[0].startswith("*/") and schedule[1:] == ["*", "*", "*", "*"]
    assert user == "workerd"  # /etc/cron.d format
    assert command[:2] == ["flock", "-n"]
    lock = next(arg for arg in command[2:] if arg.startswith("/"))
    assert lock.startswith("/run/lock/")
    workerd_args = command[command.index("workerd") :]
    assert "--burst" in workerd_args
    assert workerd_args[workerd_args.index("-c") + 1] == "/etc/workerd/app.toml"
    # "already running" must not look like workerd's runtime error (1).
    assert command[command.index("-E") + 1] not in {str(code) for code in EXIT_CODES}


@pytest.mark.parametrize("doc", ["packaging/cron/README", "docs/PACKAGING.md", "packaging/man/workerd.1"])
def test_exit_codes_are_documented(doc: str) -> None:
    text = (REPO / doc).read_text()
    codes = set(EXIT_CODES)
    try:
        from workerd.errors import ExitCode
    except ImportError:
        pass
    else:
        codes |= {int(code) for code in ExitCode}
    for code in sorted(codes):
        if doc.endswith(".1"):
            assert re.search(rf"^\.B {code}$", text, re.M), f"exit status {code} not in {doc}"
        else:
            assert re.search(rf"^\|\s*{code}\s*\|", text, re.M), f"exit code {code} not in {doc}'s table"


# --- man page --------------------------------------------------------------------


def test_man_page_renders_without_warnings() -> None:
    groff = need("groff")
    result = run(
        [groff, "-man", "-Tutf8", "-ww", "-z", str(PACKAGING / "man" / "workerd.1")],
        env={**os.environ, "LC_ALL": "C.UTF-8"},
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_man_page_documents_every_option_of_workerd_help() -> None:
    result = run(
        [
            sys.executable,
            "-c",
            "import sys; from workerd.cli import main; sys.argv[0] = 'workerd'; sys.exit(main())",
            "--help",
        ],
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", result.stdout))
    man = (PACKAGING / "man" / "workerd.1").read_text().replace("\\-", "-")
    missing = sorted(o for o in options if o not in man)
    assert missing == [], (
        f"options in `workerd --help` but not in packaging/man/workerd.1: {missing}; "
        "regenerate it with `make -f packaging/Makefile man`"
    )


# --- RPM spec --------------------------------------------------------------------


def test_spec_default_version_is_the_project_version() -> None:
    spec = (PACKAGING / "rpm" / "workerd.spec").read_text()
    match = re.search(r"^Version:\s*%\{\?upstream_version\}%\{!\?upstream_version:([^}]+)\}$", spec, re.M)
    assert match, "Version: line not found"
    assert match.group(1) == project_version()


def test_spec_parses_with_rpmspec() -> None:
    rpmspec = need("rpmspec")
    result = run([rpmspec, "-P", str(PACKAGING / "rpm" / "workerd.spec")])
    assert result.returncode == 0, result.stderr
    assert f"Version:        {project_version()}" in result.stdout
    assert "ExecStart" not in result.stdout  # sanity: it is the spec, not a unit
    assert re.search(r"^Requires:\s+/usr/bin/python3\.\d+$", result.stdout, re.M), result.stdout


def test_spec_has_no_rpmlint_errors() -> None:
    rpmlint = need("rpmlint")
    result = run([rpmlint, str(PACKAGING / "rpm" / "workerd.spec")])
    assert re.search(r"\b0 errors\b", result.stdout), result.stdout + result.stderr


# --- shell scripts ---------------------------------------------------------------

SHELL_SCRIPTS = [
    "packaging/build-venv.sh",
    "packaging/debian/build-deb.sh",
    "packaging/debian/postinst",
    "packaging/debian/prerm",
    "packaging/debian/postrm",
    "packaging/man/generate.sh",
]


@pytest.mark.parametrize("script", SHELL_SCRIPTS)
def test_shell_scripts_parse(script: str) -> None:
    result = run(["sh", "-n", str(REPO / script)])
    assert result.returncode == 0, result.stderr
    assert (REPO / script).read_text().startswith("#!/bin/sh\n")


@pytest.mark.parametrize("script", ["postinst", "prerm", "postrm"])
def test_maintainer_scripts_reject_unknown_actions(script: str, tmp_path: Path) -> None:
    # Only the fall-through branch is run: it touches nothing on the machine.
    result = run(["sh", str(PACKAGING / "debian" / script), "no-such-action"], cwd=tmp_path)
    assert result.returncode == 1
    assert "unknown argument" in result.stderr


# --- building the packages (slow) ------------------------------------------------


def build_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(REPO / ".venv"))
    )
    return env


def need_venv_python() -> None:
    if run(["/usr/bin/python3", "-c", "import venv, ensurepip"]).returncode != 0:
        pytest.skip("/usr/bin/python3 cannot make virtualenvs (python3-venv: make -f packaging/Makefile deps)")


@pytest.fixture(scope="module")
def built_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need("dpkg-deb")
    need_venv_python()
    out = tmp_path_factory.mktemp("deb")
    # Lintian runs in its own test, with its verdict asserted.
    result = run(
        ["sh", str(PACKAGING / "debian" / "build-deb.sh"), str(out)],
        timeout=BUILD_S,
        env={**build_env(), "LINTIAN": "0"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    deb = Path(result.stdout.strip().splitlines()[-1])
    assert deb.parent == out and deb.name.startswith(f"workerd_{project_version()}-1_"), deb
    return deb


@pytest.fixture(scope="module")
def unpacked_deb(built_deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("root")
    result = run(["dpkg-deb", "-x", str(built_deb), str(root)])
    assert result.returncode == 0, result.stderr
    return root


@pytest.mark.slow
def test_deb_contents(built_deb: Path) -> None:
    listing = run(["dpkg-deb", "-c", str(built_deb)])
    assert listing.returncode == 0, listing.stderr
    paths = {line.split()[5].removeprefix(".") for line in listing.stdout.splitlines()}
    for path in [
        "/opt/workerd/bin/workerd",
        "/opt/workerd/bin/python",
        "/opt/workerd/pyvenv.cfg",
        "/usr/bin/workerd",
        "/lib/systemd/system/workerd.service",
        "/lib/systemd/system/workerd@.service",
        "/etc/workerd/example.toml",
        "/usr/share/man/man1/workerd.1.gz",
        "/usr/share/doc/workerd/copyright",
        "/usr/share/doc/workerd/examples/workerd-burst.cron",
    ]:
        assert path in paths, f"{path} not in the package"
    assert any(p.startswith("/opt/workerd/lib/python3") and p.endswith("/site-packages/workerd/") for p in paths)
    # Bytecode is compiled by postinst, not shipped (Debian policy).
    assert not [p for p in paths if "__pycache__" in p]
    # Everything root-owned (--root-owner-group): ownership comes from postinst.
    assert {line.split()[1] for line in listing.stdout.splitlines()} == {"root/root"}

    fields = {}
    for name in ["Package", "Version", "Architecture", "Depends"]:
        fields[name] = run(["dpkg-deb", "-f", str(built_deb), name]).stdout.strip()
    assert fields["Package"] == "workerd"
    assert fields["Version"] == f"{project_version()}-1"
    assert re.search(r"\bpython3\.\d+\b", fields["Depends"]) and "adduser" in fields["Depends"]

    conffiles = run(["dpkg-deb", "-I", str(built_deb), "conffiles"]).stdout.split()
    assert conffiles == ["/etc/workerd/example.toml"]


@pytest.mark.slow
def test_unpacked_deb_runs_workerd_check(unpacked_deb: Path, tmp_path: Path) -> None:
    root = unpacked_deb
    binary = root / "opt/workerd/bin/workerd"
    assert os.readlink(root / "usr/bin/workerd") == INSTALLED_BINARY
    # Run from an unrelated directory with no PYTHON* variables: the code must come
    # from the unpacked tree, not from the repository or the test's virtualenv.
    env = build_env()
    where = run(
        [str(root / "opt/workerd/bin/python"), "-c", "import workerd; print(workerd.__file__)"],
        cwd=tmp_path,
        env=env,
    )
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip().startswith(str(root / "opt/workerd/lib/")), where.stdout

    check = run([str(binary), "--check", "-c", str(root / "etc/workerd/example.toml")], cwd=tmp_path, env=env)
    assert check.returncode == 0, check.stdout + check.stderr

    # Through a symlink, as /usr/bin/workerd is used: the script finds its venv from
    # its resolved path.
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "workerd").symlink_to(binary)
    via_link = run([str(tmp_path / "bin" / "workerd"), "--version"], cwd=tmp_path, env=env)
    assert via_link.returncode == 0, via_link.stderr
    assert via_link.stdout.strip() == f"workerd {project_version()}"

    # A broken file is a configuration error: exit 78, the code systemd will not
    # restart on.
    bad = tmp_path / "bad.toml"
    bad.write_text('no_such_setting = "x"\n')
    broken = run([str(binary), "--check", "-c", str(bad)], cwd=tmp_path, env=env)
    assert broken.returncode == 78, broken.stdout + broken.stderr


@pytest.mark.slow
def test_packaged_units_verify_with_the_packaged_binary(unpacked_deb: Path, tmp_path: Path) -> None:
    """The units from the package, with ExecStart pointed at the unpacked binary."""
    root = unpacked_deb
    binary = root / "opt/workerd/bin/workerd"
    assert os.access(binary, os.X_OK)
    units = []
    for name, unit_name in [
        ("workerd.service", "workerd.service"),
        ("workerd@.service", "workerd@app.service"),
    ]:
        text = (root / "lib/systemd/system" / name).read_text()
        assert text == UNITS[name].read_text()
        target = tmp_path / unit_name
        target.write_text(text.replace(f"ExecStart={INSTALLED_BINARY} ", f"ExecStart={binary} "))
        units.append(target)
    result = verify(units, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (result.stdout + result.stderr).strip() == ""


@pytest.mark.slow
def test_deb_passes_lintian(built_deb: Path) -> None:
    lintian = need("lintian")
    # Errors and warnings fail; the accepted ones are overridden inside the package
    # (usr/share/lintian/overrides/workerd), each with its reason.
    result = run([lintian, "--fail-on", "error,warning", str(built_deb)], timeout=BUILD_S)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]


@pytest.mark.slow
def test_rpm_builds(tmp_path: Path) -> None:
    need("rpmbuild")
    need_venv_python()
    result = run(
        ["make", "-f", str(PACKAGING / "Makefile"), "rpm", f"DIST_DIR={tmp_path}"],
        timeout=BUILD_S,
        cwd=REPO,
        env=build_env(),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    (rpm,) = tmp_path.glob("workerd-*.rpm")
    files = run(["rpm", "-qpl", str(rpm)]).stdout.split()
    for path in [
        "/opt/workerd/bin/workerd",
        "/usr/bin/workerd",
        "/etc/workerd/example.toml",
        "/usr/lib/systemd/system/workerd@.service",
        "/usr/share/man/man1/workerd.1.gz",
    ]:
        assert path in files
    requires = run(["rpm", "-qpR", str(rpm)]).stdout
    assert re.search(r"^/usr/bin/python3\.\d+$", requires, re.M), requires
    # No python3.Xdist(...) dependencies derived from the private venv.
    assert "dist(" not in requires

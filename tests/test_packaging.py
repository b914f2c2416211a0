"""Tests of packaging/: the systemd units, the cron example, the man page, the RPM spec,
the logrotate rule, and (marked slow) the .deb (debhelper) and .rpm builds, the logrotate
rule run by logrotate against a running pool, and the documented configuration flow as
the service user.

The tools come from the distribution: scripts/setup.sh installs them when run as root
(`make -f packaging/Makefile deps`). A test whose tool is missing names the package to
install; it skips outside CI and fails in CI (CI=true), where a skip would hide breakage.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from workerd.errors import ExitCode
from workerd.settings import Settings

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
# Subprocess bounds: nothing here should take near these; they turn a hang into a failure.
QUICK_S = 60
BUILD_S = 900


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


# The Debian package that brings each tool (packaging/Makefile's PACKAGING_APT_DEPS).
TOOL_PACKAGES = {
    "systemd-analyze": "systemd",
    "groff": "groff",
    "help2man": "help2man",
    "rpmspec": "rpm",
    "rpmbuild": "rpm",
    "rpmlint": "rpmlint",
    "dpkg-buildpackage": "dpkg-dev",
    "dh": "debhelper",
    "dh_installsystemd": "debhelper",
    "lintian": "lintian",
    "logrotate": "logrotate",
    "setpriv": "util-linux",
    "useradd": "passwd",
}


def unavailable(reason: str) -> None:
    """Skip, with what to do; in CI (CI=true) fail instead: a skipped packaging test is a
    broken one that nobody sees."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: a missing tool fails the run instead of skipping)")
    pytest.skip(reason)


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        package = TOOL_PACKAGES.get(tool, tool)
        unavailable(
            f"{tool} is not installed: apt-get install {package} (as root, scripts/setup.sh or "
            "make -f packaging/Makefile deps installs every packaging tool)"
        )
        raise AssertionError("unreachable")  # unavailable() raises
    return path


def graceful_timeout_default_s() -> float:
    """The master's default graceful (warm stop) timeout: TimeoutStopSec must leave room above it for
    the horses' own TERM -> KILL escalation."""
    return float(Settings.model_fields["graceful_timeout"].default)


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
    unit = parse_unit(UNITS["workerd@.service"])
    prevented = set(only(unit, "Service", "RestartPreventExitStatus").split())
    assert prevented == {str(int(ExitCode.NO_PERMISSION)), str(int(ExitCode.CONFIG))}


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
    assert command[command.index("-E") + 1] not in {str(int(code)) for code in ExitCode}


@pytest.mark.parametrize("doc", ["packaging/cron/README", "docs/PACKAGING.md", "packaging/man/workerd.1"])
def test_exit_codes_are_documented(doc: str) -> None:
    text = (REPO / doc).read_text()
    codes = {int(code) for code in ExitCode}
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


# --- the settings-file warning's group -------------------------------------------


def test_the_units_group_is_the_group_the_settings_warning_trusts() -> None:
    from workerd.config import SERVICE_GROUP

    for path in UNITS.values():
        assert only(parse_unit(path), "Service", "Group") == SERVICE_GROUP


# --- logrotate rule --------------------------------------------------------------

LOGROTATE = PACKAGING / "logrotate" / "workerd"
LOG_DIR = "/var/log/workerd"


def logrotate_script(text: str, name: str) -> str:
    match = re.search(rf"^\s*{name}\n(.*?)^\s*endscript$", text, re.M | re.S)
    assert match, f"no {name} script"
    return match.group(1)


def test_logrotate_rule_covers_the_log_directory_as_the_service_user() -> None:
    text = LOGROTATE.read_text()
    assert re.search(rf"^{re.escape(LOG_DIR)}/\*\.log {{$", text, re.M)
    directives = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.strip()[:1].isalpha()}
    # The directory belongs to the service user: rotate as that user, create as that user.
    assert directives["su"] == ["workerd", "workerd"]
    assert directives["create"] == ["0640", "workerd", "workerd"]
    assert "sharedscripts" in directives and "delaycompress" in directives and "missingok" in directives


def test_logrotate_postrotate_signals_the_master_alone_with_usr1() -> None:
    commands = [
        shlex.split(line)
        for line in logrotate_script(LOGROTATE.read_text(), "postrotate").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    (command,) = commands
    assert command[:2] == ["systemctl", "kill"]
    # Only the main process: a program a job has exec'd dies of USR1's default action.
    assert "--kill-who=main" in command or "--kill-whom=main" in command
    assert "--signal=USR1" in command or command[command.index("-s") + 1] == "USR1"
    patterns = [arg for arg in command if arg.endswith(".service")]
    assert any(fnmatch.fnmatch("workerd.service", p) for p in patterns)
    assert any(fnmatch.fnmatch("workerd@app.service", p) for p in patterns)
    # A machine without systemd (or no pool running) is not a logrotate error.
    assert command[-2:] == ["||", "true"]


# --- man page signals ------------------------------------------------------------


def documented_signal_names() -> set[str]:
    """Every signal named in a signal table of the README or docs/OBSERVABILITY.md."""
    names = set()
    for doc in ["README.md", "docs/OBSERVABILITY.md"]:
        for line in (REPO / doc).read_text().splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if line.startswith("|") and len(cells) > 1 and cells[0].lower() not in ("signal", "signal to the master"):
                names |= set(re.findall(r"\b(?:SIG)?(TERM|INT|QUIT|HUP|TTIN|TTOU|USR1|USR2|WINCH|ABRT)\b", cells[0]))
    return names


def test_man_page_lists_every_signal() -> None:
    from workerd.process import MASTER_SIGNALS, STOP_SIGNALS

    man = (PACKAGING / "man" / "workerd.1").read_text().replace("\\-", "-")
    section = man[man.index(".SH SIGNALS") : man.index(".SH", man.index(".SH SIGNALS") + 1)]
    handled = {signal.Signals(s).name.removeprefix("SIG") for s in [*STOP_SIGNALS, *MASTER_SIGNALS]}
    documented = documented_signal_names()
    assert handled <= documented, f"signals handled but not in the docs' signal tables: {handled - documented}"
    listed = set(re.findall(r"^\.BR? SIG(\w+)(?:\s|$)", section, re.M))
    listed |= set(re.findall(r'^\.BR SIG\w+ ", " SIG(\w+)', section, re.M))
    missing = sorted((handled | documented) - listed)
    assert missing == [], f"signals missing from the man page's SIGNALS: {missing}"
    # ...and what each process kind does with them.
    for kind in ["worker under a master", "single worker", "horse", "daemon"]:
        assert f".B {kind}" in section


# --- shell scripts ---------------------------------------------------------------

MAINTAINER_SCRIPTS = ["workerd.postinst", "workerd.prerm", "workerd.postrm"]
SHELL_SCRIPTS = [
    "packaging/build-venv.sh",
    "packaging/debian/build-deb.sh",
    *[f"packaging/debian/{name}" for name in MAINTAINER_SCRIPTS],
    "packaging/man/generate.sh",
]


@pytest.mark.parametrize("script", SHELL_SCRIPTS)
def test_shell_scripts_parse(script: str) -> None:
    result = run(["sh", "-n", str(REPO / script)])
    assert result.returncode == 0, result.stderr
    assert (REPO / script).read_text().startswith("#!/bin/sh\n")


@pytest.mark.parametrize("script", MAINTAINER_SCRIPTS)
def test_maintainer_scripts_reject_unknown_actions(script: str, tmp_path: Path) -> None:
    # Only the fall-through branch is run: it touches nothing on the machine.
    result = run(["sh", str(PACKAGING / "debian" / script), "no-such-action"], cwd=tmp_path)
    assert result.returncode == 1
    assert "unknown argument" in result.stderr


@pytest.mark.parametrize("script", MAINTAINER_SCRIPTS)
def test_maintainer_scripts_have_one_debhelper_mark(script: str) -> None:
    # debhelper replaces the first "#DEBHELPER#" anywhere, a comment's included.
    text = (PACKAGING / "debian" / script).read_text()
    assert text.count("#DEBHELPER#") == 1 and re.search(r"^#DEBHELPER#$", text, re.M)


# --- building the packages (slow) ------------------------------------------------


def build_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(REPO / ".venv"))
    )
    return env


def need_venv_python() -> None:
    if run(["/usr/bin/python3", "-c", "import venv, ensurepip"]).returncode != 0:
        unavailable("/usr/bin/python3 cannot make virtualenvs: apt-get install python3-venv")


def readme_doc_links() -> list[str]:
    """The README's links to files of this repository, as written (relative paths)."""
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", (REPO / "README.md").read_text())
    return sorted({link for link in links if "://" not in link and not link.startswith("mailto:")})


def shared_dir(prefix: str) -> Path:
    """A temporary directory other users can traverse (pytest's own are root-only)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def package_dir(tmp_path_factory: pytest.TempPathFactory, kind: str) -> tuple[Path, bool]:
    """Where to build a package, and whether it is built there already.

    The packages do not depend on the Python running the tests (they are built with
    /usr/bin/python3), so scripts/test.sh, which runs the suite once per Python, sets
    TEST_PACKAGE_CACHE to a directory of that run: the second run tests the packages
    the first one built instead of building them again (about a minute of CI time)."""
    cache = os.environ.get("TEST_PACKAGE_CACHE")
    if not cache:
        return tmp_path_factory.mktemp(kind), False
    out = Path(cache) / kind
    done = out / "built"
    if done.exists():
        return out, True
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return out, False


def mark_built(out: Path) -> None:
    if os.environ.get("TEST_PACKAGE_CACHE"):
        (out / "built").touch()


@pytest.fixture(scope="module")
def built_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for tool in ["dpkg-buildpackage", "dh", "dh_installsystemd"]:
        need(tool)
    need_venv_python()
    out, cached = package_dir(tmp_path_factory, "deb")
    if cached:
        (deb,) = out.glob("workerd_*.deb")
        return deb
    # Lintian runs in its own test, with its verdict asserted.
    result = run(
        ["sh", str(PACKAGING / "debian" / "build-deb.sh"), str(out)],
        timeout=BUILD_S,
        env={**build_env(), "LINTIAN": "0"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    deb = Path(result.stdout.strip().splitlines()[-1])
    assert deb.parent == out and deb.name.startswith(f"workerd_{project_version()}-1_"), deb
    mark_built(out)
    return deb


@pytest.fixture(scope="module")
def unpacked_deb(built_deb: Path) -> Iterator[Path]:
    # Where the service user of the tests below can run the packaged binary.
    root = shared_dir("workerd-deb-")
    try:
        result = run(["dpkg-deb", "-x", str(built_deb), str(root)])
        assert result.returncode == 0, result.stderr
        root.chmod(0o755)  # dpkg-deb gives the root directory the package's "./" mode
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def deb_listing(deb: Path) -> dict[str, str]:
    """Path in the package -> its `tar tv` line."""
    listing = run(["dpkg-deb", "-c", str(deb)])
    assert listing.returncode == 0, listing.stderr
    return {line.split()[5].removeprefix(".").rstrip("/") or "/": line for line in listing.stdout.splitlines()}


@pytest.mark.slow
def test_deb_contents(built_deb: Path) -> None:
    listing = deb_listing(built_deb)
    paths = set(listing)
    for path in [
        "/opt/workerd/bin/workerd",
        "/opt/workerd/bin/python",
        "/opt/workerd/pyvenv.cfg",
        "/usr/bin/workerd",
        "/lib/systemd/system/workerd.service",
        "/lib/systemd/system/workerd@.service",
        "/etc/workerd/example.toml",
        "/etc/logrotate.d/workerd",
        "/usr/share/man/man1/workerd.1.gz",
        "/usr/share/doc/workerd/copyright",
        "/usr/share/doc/workerd/changelog.gz",
        "/usr/share/doc/workerd/README.md",
        "/usr/share/doc/workerd/examples/workerd-burst.cron",
    ]:
        assert path in paths, f"{path} not in the package"
    assert any(p.startswith("/opt/workerd/lib/python3") and p.endswith("/site-packages/workerd") for p in paths)
    # The units' Documentation= files are there.
    for unit in UNITS.values():
        for url in only(parse_unit(unit), "Unit", "Documentation").split():
            if url.startswith("file://"):
                assert url.removeprefix("file://") in paths, f"{unit.name}: {url} not in the package"
    # Every document the README links to, where the link points from the installed README.
    for link in readme_doc_links():
        assert f"/usr/share/doc/workerd/{link}" in paths, f"README links {link}, not in the package"
    # bin/ holds workerd and the python links, no dependency's tool (python-dotenv's dotenv).
    bin_entries = {p.rsplit("/", 1)[1]: listing[p] for p in paths if p.startswith("/opt/workerd/bin/")}
    executables = {name for name, line in bin_entries.items() if not line.startswith("l")}
    assert executables == {"workerd"}, bin_entries
    # Bytecode is compiled by postinst, not shipped (Debian policy).
    assert not [p for p in paths if "__pycache__" in p]
    # Everything root-owned (Rules-Requires-Root: no): ownership comes from postinst.
    assert {line.split()[1] for line in listing.values()} == {"root/root"}

    fields = {}
    for name in ["Package", "Version", "Architecture", "Depends"]:
        fields[name] = run(["dpkg-deb", "-f", str(built_deb), name]).stdout.strip()
    assert fields["Package"] == "workerd"
    assert fields["Version"] == f"{project_version()}-1"
    assert re.search(r"\bpython3\.\d+\b", fields["Depends"]) and "adduser" in fields["Depends"]
    assert "libc6" in fields["Depends"]  # dh_shlibdeps, from the compiled extensions

    conffiles = run(["dpkg-deb", "-I", str(built_deb), "conffiles"]).stdout.split()
    assert sorted(conffiles) == ["/etc/logrotate.d/workerd", "/etc/workerd/example.toml"]


@pytest.mark.slow
def test_deb_maintainer_scripts_leave_unit_state_to_deb_systemd_helper(built_deb: Path, tmp_path: Path) -> None:
    control = tmp_path / "control"
    extract = run(["dpkg-deb", "-e", str(built_deb), str(control)])
    assert extract.returncode == 0, extract.stderr
    scripts = {}
    for name in ["postinst", "prerm", "postrm"]:
        scripts[name] = (control / name).read_text()
        check = run(["sh", "-n", str(control / name)])
        assert check.returncode == 0, f"{name}: {check.stderr}"
    # dh_installsystemd's parts: the state of workerd.service is deb-systemd-helper's.
    assert "deb-systemd-helper update-state 'workerd.service'" in scripts["postinst"]
    assert "deb-systemd-helper purge 'workerd.service'" in scripts["postrm"]
    # Nothing is started on installation (no configuration yet), nothing stopped before
    # an upgrade; every pool is stopped on removal and restarted after an upgrade.
    assert "deb-systemd-invoke start" not in scripts["postinst"]
    assert "preinst" not in os.listdir(control) or "stop" not in (control / "preinst").read_text()
    assert re.search(r"^\s*systemctl stop workerd\.service 'workerd@\*\.service'", scripts["prerm"], re.M)
    assert re.search(r"try-restart workerd\.service 'workerd@\*\.service'", scripts["postinst"])
    # The settings directory: group workerd, setgid (what the service-user test relies on).
    for line in [
        "chown root:workerd /etc/workerd",
        "chmod 2750 /etc/workerd",
        "chown root:workerd /etc/workerd/example.toml",
        "chmod 0640 /etc/workerd/example.toml",
    ]:
        assert re.search(rf"^\s*{re.escape(line)}$", scripts["postinst"], re.M), line


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
    # (usr/share/lintian/overrides/workerd), each with its reason. -I shows the
    # informational tags too: the compiled extensions are linked with BIND_NOW.
    result = run([lintian, "-I", "--fail-on", "error,warning", str(built_deb)], timeout=BUILD_S)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert "hardening-no-bindnow" not in result.stdout, result.stdout


# --- as the service user, with the packaged binary (slow) --------------------------


@pytest.fixture(scope="module")
def service_user() -> Iterator[tuple[str, int, int]]:
    """A throwaway system user with its own group, standing for the package's `workerd`."""
    useradd = need("useradd")
    need("setpriv")
    if os.geteuid() != 0:
        unavailable("creating a throwaway service user needs root")
    name = f"wdtest{os.getpid() % 100000}"
    created = run([useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                   "--shell", "/usr/sbin/nologin", name])  # fmt: skip
    assert created.returncode == 0, created.stderr
    try:
        import pwd

        entry = pwd.getpwnam(name)
        yield name, entry.pw_uid, entry.pw_gid
    finally:
        run(["userdel", name])
        run(["groupdel", name])  # when userdel kept it


def as_user(user: tuple[str, int, int], *command: str) -> list[str]:
    _, uid, gid = user
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *command]


def package_etc(unpacked_deb: Path, base: Path, gid: int) -> Path:
    """/etc/workerd as the package leaves it: root:<service group> 2750, example.toml
    root:<service group> 0640 (postinst; test_deb_maintainer_scripts_... checks the lines)."""
    etc = base / "etc-workerd"
    etc.mkdir()
    shutil.copy(unpacked_deb / "etc/workerd/example.toml", etc / "example.toml")
    for path, mode in [(etc, 0o2750), (etc / "example.toml", 0o640)]:
        os.chown(path, 0, gid)
        path.chmod(mode)
    return etc


@pytest.mark.slow
def test_documented_config_flow_works_as_the_service_user(
    unpacked_deb: Path, service_user: tuple[str, int, int], redis_url: str
) -> None:
    """PACKAGING.md: `cp /etc/workerd/example.toml /etc/workerd/app.toml`, then
    `sudo -u workerd workerd --check -c /etc/workerd/app.toml` — as written."""
    binary = str(unpacked_deb / "opt/workerd/bin/workerd")
    _, _, gid = service_user
    base = shared_dir("workerd-etc-")
    try:
        etc = package_etc(unpacked_deb, base, gid)
        # As root with the usual umask, exactly the documented command.
        cp = run(["sh", "-c", f"umask 022 && cp {etc}/example.toml {etc}/app.toml"])
        assert cp.returncode == 0, cp.stderr
        app = (etc / "app.toml").stat()
        assert (app.st_uid, app.st_gid, stat.S_IMODE(app.st_mode)) == (0, gid, 0o640)

        check = run(as_user(service_user, binary, "--check", "-c", str(etc / "app.toml")), env=build_env())
        assert check.returncode == 0, check.stdout + check.stderr

        # With a password in it (how most app.toml end up), the service user's check and
        # run say nothing about permissions: group workerd is the service's own group.
        with (etc / "app.toml").open("a") as f:
            f.write(f'redis_url = "{redis_url.replace("redis://", "redis://:secret@")}"\n')
        text = (etc / "app.toml").read_text()
        (etc / "app.toml").write_text(text.replace('redis_url = "redis://localhost:6379/0"\n', "", 1))
        check = run(as_user(service_user, binary, "--check", "-c", str(etc / "app.toml")), env=build_env())
        assert check.returncode == 0, check.stdout + check.stderr
        assert "holds a password" not in check.stdout + check.stderr

        # A world-readable copy is still reported.
        (etc / "app.toml").chmod(0o644)
        check = run(as_user(service_user, binary, "--check", "-c", str(etc / "app.toml")), env=build_env())
        assert check.returncode == 0 and "is readable by every user" in check.stdout + check.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


def log_lines_by_pid(path: Path) -> dict[int, list[str]]:
    lines: dict[int, list[str]] = {}
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            pid, _, message = line.partition(" ")
            if pid.isdigit():
                lines.setdefault(int(pid), []).append(message)
    return lines


@pytest.mark.slow
def test_logrotate_rotates_and_the_running_pool_reopens(
    unpacked_deb: Path, service_user: tuple[str, int, int], redis_url: str
) -> None:
    """The package's /etc/logrotate.d/workerd, run by logrotate -f with its paths and user
    redirected to a temporary directory and the throwaway service user, against a pool
    of the packaged workerd running as that user. systemctl is a stand-in that acts as
    `systemctl kill --kill-whom=main` would: the signal to the main process only."""
    from tests.conftest import wait_until

    logrotate = need("logrotate")
    name, uid, gid = service_user
    binary = str(unpacked_deb / "opt/workerd/bin/workerd")
    base = shared_dir("workerd-logrotate-")
    proc = None
    try:
        log_dir = base / "log"
        log_dir.mkdir(mode=0o750)
        os.chown(log_dir, uid, gid)  # as LogsDirectory= / postinst make /var/log/workerd
        log_file = log_dir / "app.log"
        etc = package_etc(unpacked_deb, base, gid)
        (etc / "app.toml").write_text(
            f'redis_url = "{redis_url}"\nqueues = ["logrotate-test"]\nworkers = 2\n'
            f'log_file = "{log_file}"\nlog_format = "%(process)d %(message)s"\n'
        )
        os.chown(etc / "app.toml", 0, gid)
        (etc / "app.toml").chmod(0o640)
        proc = subprocess.Popen(
            as_user(service_user, binary, "-c", str(etc / "app.toml")),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=build_env(),
            cwd=base,
            start_new_session=True,
        )
        master = proc.pid  # setpriv and the sh entry point exec: the master keeps this pid

        def workers() -> set[int]:
            return {pid for pid, lines in log_lines_by_pid(log_file).items() if pid != master and any(
                "started with PID" in line for line in lines)}  # fmt: skip

        wait_until(lambda: len(workers()) == 2 and master in log_lines_by_pid(log_file), timeout=30,
                   message="the master and two workers logging to the file")  # fmt: skip
        before = workers()

        # The package's rule, its paths and user redirected.
        rule = (unpacked_deb / "etc/logrotate.d/workerd").read_text()
        assert rule == LOGROTATE.read_text()
        rule = rule.replace(f"{LOG_DIR}/", f"{log_dir}/").replace(" workerd workerd", f" {name} {name}")
        (base / "logrotate.conf").write_text(rule)
        shim = base / "bin"
        shim.mkdir()
        calls = base / "systemctl-calls"
        (shim / "systemctl").write_text(
            "#!/bin/sh\n"
            f'echo "$*" >> {calls}\n'
            # kill --kill-who[m]=main --signal=USR1 PATTERN...: the pool matches workerd@app.service.
            'case " $* " in *" kill "*"=main "*) ;; *) exit 1 ;; esac\n'
            f"exec kill -USR1 {master}\n"
        )
        (shim / "systemctl").chmod(0o755)
        env = {**build_env(), "PATH": f"{shim}{os.pathsep}{build_env()['PATH']}"}
        result = run([logrotate, "-f", "-s", str(base / "state"), str(base / "logrotate.conf")], env=env)
        assert result.returncode == 0, result.stdout + result.stderr

        rotated = log_dir / "app.log.1"
        assert rotated.exists() and log_file.exists(), sorted(p.name for p in log_dir.iterdir())
        created = log_file.stat()
        assert (created.st_uid, created.st_gid, stat.S_IMODE(created.st_mode)) == (uid, gid, 0o640)
        (call,) = calls.read_text().splitlines()
        assert call.split()[0] == "kill" and "USR1" in call
        # The master reopens on the signal and logs it in the new file.
        wait_until(lambda: any("log files reopened" in line for line in log_lines_by_pid(log_file).get(master, [])),
                   timeout=15, message="the master's line in the new file")  # fmt: skip
        # A worker, which got no signal, writes its next line to the new file too.
        os.kill(master, signal.SIGTTOU)
        wait_until(lambda: bool(before & set(log_lines_by_pid(log_file))), timeout=15,
                   message="a worker's line in the new file")  # fmt: skip
        assert master in log_lines_by_pid(rotated) and before <= set(log_lines_by_pid(rotated))
        assert not any("reopened" in line for lines in log_lines_by_pid(rotated).values() for line in lines)
        assert proc.poll() is None  # nobody died of USR1
    finally:
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        shutil.rmtree(base, ignore_errors=True)

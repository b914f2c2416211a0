"""Refused credentials are a settings problem, not an outage (issue 12, defect 7).

A wrong or missing password, a disabled ACL user, a user without the commands workerd needs: each
is reported at once (no 30 s of "cannot reach Redis" retries), says
what to check, never prints the password, and exits with a code systemd does not restart into a loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import WorkerdProcess, run_workerd
from tests.redis_server import RedisServer

PASSWORD = "s3cret-Pw-4711"
WRONG = "wrong-Pw-0815"
USER_PASSWORD = "bobs-Pw-9922"
FAST_S = 10.0  # an outage is retried for ~30 s: a refusal must be reported well before that


@pytest.fixture(scope="module")
def locked_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server with requirepass, a disabled ACL user and one allowed only PING."""
    server = RedisServer(tmp_path_factory.mktemp("redis-auth"), password=PASSWORD)
    server.start()
    client = server.client()
    client.execute_command("ACL", "SETUSER", "bob", "off", f">{USER_PASSWORD}", "~*", "+@all")
    client.execute_command("ACL", "SETUSER", "carol", "on", f">{USER_PASSWORD}", "~*", "+ping", "+auth", "+hello")
    yield server
    server.stop(kill=True)


def _url(server: RedisServer, auth: str) -> str:
    return f"redis://{auth}127.0.0.1:{server.port}/0"


def _assert_refused(result_code: int, output: str, elapsed_s: float, secret: str | None) -> None:
    assert result_code == 77, output
    assert elapsed_s < FAST_S, f"took {elapsed_s:.1f} s:\n{output}"
    assert "refused workerd's credentials" in output and "check the password" in output, output
    assert "check that Redis is running" not in output and "retrying" not in output, output
    if secret is not None:
        assert secret not in output


REFUSED = [(f":{WRONG}@", WRONG), ("", None), (f"bob:{USER_PASSWORD}@", USER_PASSWORD)]


@pytest.mark.parametrize(("auth", "secret"), REFUSED, ids=["wrong-password", "no-password", "disabled-acl-user"])
def test_single_worker_exits_77_at_once(locked_server: RedisServer, auth: str, secret: str | None) -> None:
    started = time.monotonic()
    result = run_workerd("-u", _url(locked_server, auth), "default", timeout=30)
    _assert_refused(result.returncode, result.stdout + result.stderr, time.monotonic() - started, secret)


def test_burst_exits_77_at_once(locked_server: RedisServer) -> None:
    started = time.monotonic()
    result = run_workerd("--burst", "-u", _url(locked_server, f":{WRONG}@"), "default", timeout=30)
    _assert_refused(result.returncode, result.stdout + result.stderr, time.monotonic() - started, WRONG)


def test_user_without_permission_exits_77(locked_server: RedisServer) -> None:
    """carol may PING but not INFO: NOPERM (a ResponseError, not a connection error) is refused the same way."""
    started = time.monotonic()
    result = run_workerd("--burst", "-u", _url(locked_server, f"carol:{USER_PASSWORD}@"), "default", timeout=30)
    output = result.stdout + result.stderr
    _assert_refused(result.returncode, output, time.monotonic() - started, USER_PASSWORD)
    assert "NOPERM" in output or "no permissions" in output


def test_pool_master_stops_with_77(locked_server: RedisServer, workerd: Callable[..., WorkerdProcess]) -> None:
    """The master stops with the workers' code instead of restarting them into a loop."""
    started = time.monotonic()
    master = workerd("--workers", "2", "-u", _url(locked_server, f":{WRONG}@"), "default")
    code = master.wait(timeout=30)
    output = master.output()
    _assert_refused(code, output, time.monotonic() - started, WRONG)
    assert output.count("master: started worker") <= 2, output  # no restarts of refused workers


@pytest.mark.parametrize("command", [["health"], ["info"], ["suspend"]])
@pytest.mark.parametrize(
    ("auth", "secret"),
    [*REFUSED, (f"carol:{USER_PASSWORD}@", USER_PASSWORD)],
    ids=["wrong-password", "no-password", "disabled-acl-user", "user-without-permission"],
)
def test_subcommands_exit_77_at_once(locked_server: RedisServer, command: list[str], auth: str,
                                     secret: str | None) -> None:  # fmt: skip
    """`workerd health` is what a container probe runs: "unhealthy" (1) there means "restart me", which
    cannot help when the credentials are wrong; 77 says what to fix, as the worker does."""
    started = time.monotonic()
    result = run_workerd(*command, "-u", _url(locked_server, auth), timeout=30)
    output = result.stdout + result.stderr
    _assert_refused(result.returncode, output, time.monotonic() - started, secret)
    assert "unhealthy" not in output and "unreachable" not in output, output

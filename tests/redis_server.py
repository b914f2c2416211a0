"""A throwaway redis-server for the tests: own port, own directory, can be stopped and restarted."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    def __init__(self, directory: Path, port: int | None = None, appendonly: bool = False,
                 password: str | None = None, tls_dir: Path | None = None,
                 extra_args: Sequence[str] = ()) -> None:  # fmt: skip
        self.binary = redis_binary()
        self.directory = directory
        self.port = port or free_port()
        self.appendonly = appendonly
        self.password = password  # requirepass: clients (and the URL) need it
        self.process: subprocess.Popen[bytes] | None = None
        # With tls_dir (ca.crt, server.crt, server.key: see make_tls_files), a TLS port as well.
        self.tls_dir = tls_dir
        self.tls_port = free_port() if tls_dir else None
        self.extra_args = list(extra_args)  # e.g. ["--replicaof", host, port] or ["--cluster-enabled", "yes"]

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10, password=self.password)

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
                "--logfile", str(self.directory / "redis.log")]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        if self.tls_dir:
            args += ["--tls-port", str(self.tls_port), "--tls-cert-file", str(self.tls_dir / "server.crt"),
                     "--tls-key-file", str(self.tls_dir / "server.key"),
                     "--tls-ca-cert-file", str(self.tls_dir / "ca.crt"), "--tls-auth-clients", "no"]  # fmt: skip
        self.process = _launch([*args, *self.extra_args], self.client, self.port, self.directory / "redis.log")

    def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


class SentinelServer:
    """A throwaway Redis Sentinel (`redis-server <conf> --sentinel`: there is no redis-sentinel binary
    on the test machines) monitoring `master_port` as MASTER_NAME, with short timeouts so that a
    failover takes about a second."""

    MASTER_NAME = "mymaster"

    def __init__(self, directory: Path, master_port: int, quorum: int = 2) -> None:
        self.binary = redis_binary()
        self.directory = directory
        self.port = free_port()
        self.master_port = master_port
        self.quorum = quorum
        self.process: subprocess.Popen[bytes] | None = None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10, decode_responses=True)

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "sentinel.conf"  # Sentinel rewrites it: a file of its own
        name = self.MASTER_NAME
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.directory}\nlogfile {self.directory / 'sentinel.log'}\n"
            f"sentinel monitor {name} 127.0.0.1 {self.master_port} {self.quorum}\n"
            f"sentinel down-after-milliseconds {name} 1000\nsentinel failover-timeout {name} 5000\n"
            f"sentinel parallel-syncs {name} 1\n"
        )
        args = [self.binary, str(conf), "--sentinel"]
        self.process = _launch(args, self.client, self.port, self.directory / "sentinel.log")

    def master_address(self) -> tuple[str, int]:
        host, port = self.client().sentinel_get_master_addr_by_name(self.MASTER_NAME)
        return str(host), int(port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "redis-server is not installed: run `bash scripts/setup.sh` (it installs it with apt-get), "
            "or install the 'redis-server' package of your distribution"
        )
    return binary


def _launch(args: list[str], client: Callable[[], redis.Redis], port: int, log: Path) -> subprocess.Popen[bytes]:
    """Start a server and return once it answers PING (within 10 s)."""
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if client().ping():
                return process
        except redis.ConnectionError:
            time.sleep(0.02)
    process.kill()
    process.wait(timeout=10)
    raise RuntimeError(f"{args[0]} did not start on port {port}; see {log}")


def make_tls_files(directory: Path) -> Path:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it, made with openssl."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    # Python 3.13 verifies strictly (VERIFY_X509_STRICT): a CA needs basicConstraints and keyUsage, a
    # server certificate its key usages, as a real CA's certificates have them.
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=workerd test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
            "-out", "server.csr")  # fmt: skip
    (directory / "san.cnf").write_text(
        "subjectAltName = IP:127.0.0.1\nkeyUsage = critical,digitalSignature,"
        "keyEncipherment\nextendedKeyUsage = serverAuth\nauthorityKeyIdentifier = keyid\n"
    )
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.cnf", "-out", "server.crt")  # fmt: skip
    return directory

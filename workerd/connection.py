"""Building a Redis client from the settings (URL, host/port, or Sentinel), and naming it safely."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
import weakref
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool

from workerd.config import mask_url
from workerd.errors import ConfigError, RedisAuthError, WorkerdError
from workerd.settings import Settings
from workerd.utils import import_attribute

MINIMUM_REDIS_VERSION = (6, 2, 0)  # BLMOVE, used to wait on queues without taking a job
# A Sentinel answers from memory: one that takes longer is down, and the next one is asked.
SENTINEL_TIMEOUT_S = 2.0
DEFAULT_SENTINELS = [("localhost", 26379)]
DEFAULT_MASTER_NAME = "mymaster"


def connect(settings: Settings) -> redis.Redis:
    """A client for the configured Redis. Nothing is sent until the first command."""
    client_class: Any = import_attribute(settings.connection_class) if settings.connection_class else redis.Redis
    # No retries inside redis-py: workerd's loops retry with their own backoff and report the outage
    # meanwhile. redis-py's default differs by how a client is built (none from a URL, 10 with backoff
    # from host/port), which made one failed call take 4 s or far longer (behind a dropping firewall).
    options: dict[str, Any] = {
        "socket_timeout": settings.redis_socket_timeout,
        "socket_connect_timeout": settings.redis_connect_timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    tls = settings.tls_options  # validated: set only when the connection uses TLS
    if settings.redis_url is not None:
        return client_class.from_url(settings.redis_url.get_secret_value(), **options, **tls)
    if settings.sentinel:  # its own SSL and CONNECTION_KWARGS, as rq's SENTINEL
        return _sentinel_master(settings.sentinel, options, settings.effective_heartbeat_s)
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    return client_class(
        host=settings.redis_host,
        port=settings.redis_port,
        db=settings.redis_db,
        password=password,
        ssl=settings.redis_ssl,
        **options,
        **tls,
    )


def _sentinel_options(config: dict[str, Any]) -> dict[str, Any]:
    return {str(k).upper(): v for k, v in config.items()}


def sentinel_instances(config: dict[str, Any]) -> list[tuple[str, int]]:
    """The Sentinels' addresses, as SENTINEL's INSTANCES gives them (rq's default: localhost:26379)."""
    return [(str(host), int(port)) for host, port in _sentinel_options(config).get("INSTANCES", DEFAULT_SENTINELS)]


def _sentinel_master(config: dict[str, Any], timeouts: dict[str, Any], check_interval_s: float) -> redis.Redis:
    options = _sentinel_options(config)
    connection_kwargs = dict(options.get("CONNECTION_KWARGS", {}))
    for key, name in (("USERNAME", "username"), ("PASSWORD", "password"), ("SSL", "ssl")):
        if key in options:
            connection_kwargs[name] = options[key]
    if "SOCKET_TIMEOUT" in options:
        timeouts = {**timeouts, "socket_timeout": options["SOCKET_TIMEOUT"]}
    # Without these redis-py gives the Sentinels the master's 30 s timeout and its default retries:
    # one Sentinel that is down would hold up every question for far longer than asking the next.
    sentinel_kwargs = {"socket_timeout": SENTINEL_TIMEOUT_S, "socket_connect_timeout": SENTINEL_TIMEOUT_S,
                       "retry": Retry(NoBackoff(), 0), **(options.get("SENTINEL_KWARGS") or {})}  # fmt: skip
    sentinel = NewestMasterSentinel(sentinel_instances(config), sentinel_kwargs=sentinel_kwargs, **timeouts,
                                    **connection_kwargs)  # fmt: skip
    name = options.get("MASTER_NAME", DEFAULT_MASTER_NAME)
    return sentinel.master_for(name, db=options.get("DB", 0), connection_pool_class=FollowingSentinelPool,
                               check_interval_s=check_interval_s)  # fmt: skip


class NewestMasterSentinel(Sentinel):
    """Sentinels that name the master of the latest failover.

    redis-py takes the first Sentinel's answer. For a second or two after a failover the Sentinels
    that have not heard of it yet still name the old master, so a client asking them in turn went
    back and forth between the two; the master with the highest config epoch is the current one."""

    def discover_master(self, service_name: str) -> tuple[str, int]:
        newest: tuple[int, tuple[str, int]] | None = None
        errors = []
        for sentinel in self.sentinels:
            try:
                masters: Any = sentinel.sentinel_masters()
                state = masters.get(service_name)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                errors.append(f"{sentinel} - {exc!r}")
                continue
            if state and self.check_master_state(state, service_name):
                epoch = int(state.get("config-epoch", 0))
                if newest is None or epoch > newest[0]:
                    newest = (epoch, (str(state["ip"]), int(state["port"])))
        if newest is None:
            detail = f": {', '.join(errors)}" if errors else ""
            raise MasterNotFoundError(f"No master found for {service_name!r}{detail}")
        return newest[1]


class FollowingSentinelPool(SentinelConnectionPool):
    """A Sentinel pool that notices a failover within one heartbeat.

    redis-py asks the Sentinels only when it opens a connection, so after a failover its pooled
    connections keep writing to the old master until that is demoted, which Sentinel does only when
    it next looks at it (about 10 s later); those writes are lost when the old master resyncs as a
    replica. This pool asks the Sentinels again at most every `check_interval_s` (the heartbeat
    interval; the worker sends a command at least that often) and, if the master moved, drops every
    connection and raises a ConnectionError: the worker's outage handling then closes its other
    connections (queue waiters, pub/sub) and retries, and every new connection goes to the new master.
    Its claims on the old master that were lost come back as any abandoned job does (lease expiry)."""

    def __init__(self, service_name: str, sentinel_manager: Sentinel, check_interval_s: float, **kwargs: Any) -> None:
        super().__init__(service_name, sentinel_manager, **kwargs)
        self.check_interval_s = check_interval_s
        self._next_check_at = 0.0
        self._made: weakref.WeakSet[Any] = weakref.WeakSet()
        self._known_master: tuple[str, int] | None = None  # the master our connections were made to

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        self._follow_master()
        return super().get_connection(*args, **kwargs)

    def make_connection(self) -> Any:
        connection = super().make_connection()
        self._made.add(connection)  # also the queue waiter's, which the pool does not keep
        return connection

    def _cut_off(self) -> None:
        """Close every connection this pool made. A shutdown, not only a close: a pre-forked horse
        holds copies of the sockets, and a queue waiter's connection that is merely disconnected
        reconnects (to the new master) without its BLMOVE; a shut-down one fails its next read."""
        for connection in list(self._made):
            sock = getattr(connection, "_sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self.disconnect()

    def _follow_master(self) -> None:
        # `master_address` is redis-py's latest answer, whoever asked: our check below, or a new
        # connection's connect(), after which redis-py drops only the idle connections - the ones in
        # use (pub/sub, the queue waits) must be cut off all the same.
        if self._known_master is None:
            self._known_master = self.master_address  # None until the first connection asks
            if self._known_master is None:
                return
        now = time.monotonic()
        if now >= self._next_check_at:
            self._next_check_at = now + self.check_interval_s
            with contextlib.suppress(MasterNotFoundError):  # no Sentinel answers: the master may be fine,
                self.get_master_address()  # and its own connections will say if not
        current = self.master_address
        if current is not None and current != self._known_master:
            before, self._known_master = self._known_master, current
            self._cut_off()
            raise redis.ConnectionError(
                f"Sentinel moved master {self.service_name!r} from {_address(before)} to {_address(current)}"
            )


def _address(host_port: tuple[str, int]) -> str:
    return f"{host_port[0]}:{host_port[1]}"


def describe(settings: Settings) -> str:
    """Where we connect to, for log lines: never includes a password."""
    if settings.redis_url is not None:
        return mask_url(settings.redis_url.get_secret_value())
    if settings.sentinel:
        name = _sentinel_options(settings.sentinel).get("MASTER_NAME", DEFAULT_MASTER_NAME)
        sentinels = ", ".join(_address(a) for a in sentinel_instances(settings.sentinel))
        return f"Sentinel master {name!r} (Sentinels {sentinels})"
    scheme = "rediss" if settings.redis_ssl else "redis"
    return f"{scheme}://{settings.redis_host}:{settings.redis_port}/{settings.redis_db}"


def hint(exc: BaseException) -> str:
    """What to check when Redis cannot be reached with this error."""
    if "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return "check REDIS_SSL_CA_CERTS (the CA that signed Redis's certificate) or REDIS_SSL_CERT_REQS"
    if isinstance(exc, MasterNotFoundError):
        return ("check SENTINEL's INSTANCES (the Sentinels' host and port) and MASTER_NAME, and that the "
                "Sentinels are running and monitor that master")  # fmt: skip
    return "check REDIS_URL / --url and that Redis is running"


def refusal(exc: BaseException, where: str) -> WorkerdError | None:
    """The settings error behind a failed Redis call, or None if it may be an outage worth retrying.

    redis-py's AuthenticationError is a ConnectionError, and a certificate that fails verification
    arrives as one too: retried for 30 s and then reported as "Redis unreachable", either sends the
    reader to look at a Redis that is fine. Both meet the same refusal at every retry and restart."""
    if isinstance(exc, (redis.AuthenticationError, redis.exceptions.NoPermissionError)):
        return RedisAuthError(
            f"Redis at {where} refused workerd's credentials ({exc}): this is a settings error, not an outage; "
            "check the password and user in REDIS_URL / REDIS_PASSWORD, and that the ACL user is enabled and "
            "allowed the commands workerd uses"
        )
    if _certificate_failed(exc):
        return ConfigError(
            f"Redis at {where} presented a certificate that failed verification ({exc}): this is a settings "
            "error, not an outage; check REDIS_SSL_CA_CERTS / REDIS_SSL_CA_DATA (the CA that signed Redis's "
            "certificate) and that the host in REDIS_URL / REDIS_HOST is a name or address the certificate is for"
        )
    return None


def _certificate_failed(exc: BaseException) -> bool:
    # redis-py raises its ConnectionError while handling the ssl error; older ones keep only the text.
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        cause = cause.__cause__ or cause.__context__
    return isinstance(exc, redis.ConnectionError) and "CERTIFICATE_VERIFY_FAILED" in str(exc).upper().replace(" ", "_")


def check_version(client: redis.Redis) -> None:
    """The server is one workerd can run on: a plain Redis (not a Sentinel, not a Cluster node), 6.2 or newer."""
    info = client.info("server")
    _check_mode(str(info.get("redis_mode", "standalone")), client)
    version_text = str(info.get("redis_version", "0"))
    version = tuple(int(part) for part in version_text.split(".")[:3] if part.isdigit())
    if version < MINIMUM_REDIS_VERSION:
        raise RuntimeError(f"Redis {version_text} is too old: workerd needs 6.2 or newer (for BLMOVE)")


def _check_mode(mode: str, client: redis.Redis) -> None:
    where = _client_address(client)
    if mode == "sentinel":
        raise ConfigError(
            f"{where} is a Redis Sentinel, not a Redis server: a Sentinel only tells where the master is. "
            "Leave REDIS_URL unset and set SENTINEL instead: in a TOML settings file a [sentinel] table with "
            'INSTANCES = [["host", 26379], ...] and MASTER_NAME = "mymaster", or WORKERD_SENTINEL as JSON '
            '(\'{"INSTANCES": [["host", 26379]], "MASTER_NAME": "mymaster"}\'); see docs/SCALING.md'
        )
    if mode == "cluster":
        raise ConfigError(
            f"{where} is a Redis Cluster node: workerd does not support Redis Cluster. RQ's key layout "
            "(rq:job:<id>, rq:queue:<name>, the registries) puts a job's keys in different hash slots, and "
            "workerd's Lua scripts move a job between several of them at once, which a Cluster refuses "
            "(CROSSSLOT). Use one Redis, with replicas and Sentinel for failover (docs/SCALING.md)"
        )


def _client_address(client: redis.Redis) -> str:
    kwargs = getattr(client.connection_pool, "connection_kwargs", {})
    if "path" in kwargs:
        return f"Redis at {kwargs['path']}"
    return f"Redis at {kwargs.get('host', '?')}:{kwargs.get('port', '?')}"

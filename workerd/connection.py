"""Building a Redis client from the settings (URL, host/port, or Sentinel), and naming it safely."""

from __future__ import annotations

import ssl
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from workerd.config import mask_url
from workerd.errors import ConfigError, RedisAuthError, WorkerdError
from workerd.settings import Settings
from workerd.utils import import_attribute

# Commands on the main connection are short; the one long one is a commit carrying a big result.
SOCKET_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 5.0
MINIMUM_REDIS_VERSION = (6, 2, 0)  # BLMOVE, used to wait on queues without taking a job


def connect(settings: Settings) -> redis.Redis:
    """A client for the configured Redis. Nothing is sent until the first command."""
    client_class: Any = import_attribute(settings.connection_class) if settings.connection_class else redis.Redis
    # No retries inside redis-py: workerd's loops retry with their own backoff and report the outage
    # meanwhile. redis-py's default differs by how a client is built (none from a URL, 10 with backoff
    # from host/port), which made one failed call take 4 s or far longer (behind a dropping firewall).
    options: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "retry": Retry(NoBackoff(), 0),
    }
    tls = settings.tls_options  # validated: set only when the connection uses TLS
    if settings.redis_url is not None:
        return client_class.from_url(settings.redis_url.get_secret_value(), **options, **tls)
    if settings.sentinel:  # its own SSL and CONNECTION_KWARGS, as rq's SENTINEL
        return _sentinel_master(settings.sentinel, options)
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


def _sentinel_master(config: dict[str, Any], timeouts: dict[str, Any]) -> redis.Redis:
    from redis.sentinel import Sentinel

    options = {str(k).upper(): v for k, v in config.items()}
    instances = [tuple(i) for i in options.get("INSTANCES", [("localhost", 26379)])]
    connection_kwargs = dict(options.get("CONNECTION_KWARGS", {}))
    for key, name in (("USERNAME", "username"), ("PASSWORD", "password"), ("SSL", "ssl")):
        if key in options:
            connection_kwargs[name] = options[key]
    if "SOCKET_TIMEOUT" in options:
        timeouts = {**timeouts, "socket_timeout": options["SOCKET_TIMEOUT"]}
    sentinel = Sentinel(instances, sentinel_kwargs=options.get("SENTINEL_KWARGS"), **timeouts, **connection_kwargs)
    return sentinel.master_for(options.get("MASTER_NAME", "mymaster"), db=options.get("DB", 0))


def describe(settings: Settings) -> str:
    """Where we connect to, for log lines: never includes a password."""
    if settings.redis_url is not None:
        return mask_url(settings.redis_url.get_secret_value())
    if settings.sentinel:
        return f"sentinel master {settings.sentinel.get('MASTER_NAME', 'mymaster')}"
    scheme = "rediss" if settings.redis_ssl else "redis"
    return f"{scheme}://{settings.redis_host}:{settings.redis_port}/{settings.redis_db}"


def hint(exc: BaseException) -> str:
    """What to check when Redis cannot be reached with this error."""
    if "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return "check REDIS_SSL_CA_CERTS (the CA that signed Redis's certificate) or REDIS_SSL_CERT_REQS"
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
    version_text = str(client.info("server").get("redis_version", "0"))
    version = tuple(int(part) for part in version_text.split(".")[:3] if part.isdigit())
    if version < MINIMUM_REDIS_VERSION:
        raise RuntimeError(f"Redis {version_text} is too old: workerd needs 6.2 or newer (for BLMOVE)")

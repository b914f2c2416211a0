"""Every setting, declared once.

Each field below is the one declaration of a setting: its type, default and documentation; its
command-line flags (`flags` in the field's extra, RQ's spellings first); its environment name
(`WORKERD_<NAME>`); its name in a TOML file (lowercase) and in a Python settings module
(UPPERCASE). The CLI parser, `--help`, `--print-config` and docs/CONFIGURATION.md are all derived
from this class.

Precedence: command line > environment > settings file > defaults.
"""

from __future__ import annotations

import contextvars
from typing import Annotated, Any, Literal

from pydantic import Field, FilePath, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from workerd.job import MAX_TTL_S
from workerd.utils import validate_queue_name

ENV_PREFIX = "WORKERD_"
_RQ_WORKER_CLASSES = {
    "rq.Worker": "fork", "rq.worker.Worker": "fork",
    "rq.SimpleWorker": "inprocess", "rq.worker.SimpleWorker": "inprocess",
}  # fmt: skip
CommaList = Annotated[list[str], NoDecode]


def _cli(*flags: str, metavar: str | None = None, repeat: bool = False) -> dict[str, Any]:
    return {"flags": list(flags), "metavar": metavar, "repeat": repeat}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", case_sensitive=False, validate_default=True
    )

    # -- Redis --------------------------------------------------------------------------------------
    redis_url: SecretStr | None = Field(
        None, description="Redis URL, e.g. redis://:password@host:6379/0 (rediss:// for TLS, unix:// too).",
        json_schema_extra=_cli("-u", "--url", metavar="URL"))  # fmt: skip
    redis_host: str = Field("localhost", description="Redis host, used when no URL is given.")
    redis_port: int = Field(6379, ge=1, le=65535, description="Redis port, used when no URL is given.")
    redis_db: int = Field(0, ge=0, description="Redis database number, used when no URL is given.")
    redis_password: SecretStr | None = Field(None, description="Redis password, used when no URL is given.")
    redis_ssl: bool = Field(False, description="Use TLS to Redis, used when no URL is given.")
    # rq's names for the TLS options of its REDIS_SSL connection; workerd applies them to rediss:// URLs too.
    redis_ssl_ca_certs: FilePath | None = Field(
        None, description="CA bundle to verify Redis's certificate with (TLS: REDIS_SSL or a rediss:// URL)."
    )
    redis_ssl_ca_data: str | None = Field(None, description="CA certificates as PEM text, instead of a file (TLS).")
    redis_ssl_certfile: FilePath | None = Field(None, description="Client certificate file, for TLS client auth.")
    redis_ssl_keyfile: FilePath | None = Field(None, description="Private key file of the client certificate (TLS).")
    redis_ssl_cert_reqs: Literal["required", "optional", "none"] = Field(
        "required", description="Whether Redis's TLS certificate must verify: required, optional or none."
    )
    redis_socket_timeout: float = Field(
        30.0, ge=1, le=3600, description="Seconds a Redis command may wait for its reply before the connection "
        "is called broken (waiting on queues is not bounded by it); the longest command is a commit carrying a "
        "large result. A pool's master calls a worker stuck only after this plus REDIS_CONNECT_TIMEOUT without a "
        "report.")  # fmt: skip
    redis_connect_timeout: float = Field(
        5.0, gt=0, le=600, description="Seconds to wait for a connection to Redis to open.")  # fmt: skip
    sentinel: dict[str, Any] | None = Field(
        None, description="Redis Sentinel, as RQ's SENTINEL: INSTANCES, MASTER_NAME, DB, USERNAME, PASSWORD, "
        "SOCKET_TIMEOUT, SSL, CONNECTION_KWARGS, SENTINEL_KWARGS.")  # fmt: skip
    connection_class: str | None = Field(
        None, description="Dotted path of a redis-py client class (default redis.Redis).",
        json_schema_extra=_cli("--connection-class", metavar="CLASS"))  # fmt: skip

    # -- what to run --------------------------------------------------------------------------------
    queues: CommaList = Field(
        default_factory=lambda: ["default"],
        description="Queues to listen on, highest priority first (positional QUEUE arguments).")  # fmt: skip
    name: str | None = Field(
        None, description="Worker name (default: a random hex id). In a pool, workers add '.<index>'.",
        json_schema_extra=_cli("-n", "--name", metavar="NAME"))  # fmt: skip
    path: CommaList = Field(
        default_factory=lambda: ["."], description="Directories added to sys.path before importing jobs.",
        json_schema_extra=_cli("-P", "--path", metavar="DIR", repeat=True))  # fmt: skip
    preload: CommaList = Field(
        default_factory=list,
        description="Modules imported before forking, so every horse starts with them loaded: once per generation "
        "of workers, by its zygote, so that a reload (HUP) imports them afresh.",
        json_schema_extra=_cli("--preload", metavar="MODULE", repeat=True))  # fmt: skip
    burst: bool = Field(
        False, description="Run until the queues are empty, then exit 0.", json_schema_extra=_cli("-b", "--burst")
    )
    max_jobs: int | None = Field(
        None, ge=1, description="Exit after this many jobs.",
        json_schema_extra=_cli("--max-jobs", metavar="N"))  # fmt: skip
    max_idle_time: int | None = Field(
        None, ge=1, description="Exit after this many seconds without a job.",
        json_schema_extra=_cli("--max-idle-time", metavar="SECONDS"))  # fmt: skip
    dequeue_strategy: Literal["default", "round_robin", "random"] = Field(
        "default", description="Queue order: fixed priority, rotating, or shuffled after each job.",
        json_schema_extra=_cli("-ds", "--dequeue-strategy", metavar="STRATEGY"))  # fmt: skip
    with_scheduler: bool = Field(
        False, description="Also promote scheduled jobs (accepted for rq compatibility; see the README).",
        json_schema_extra=_cli("-s", "--with-scheduler"))  # fmt: skip

    # -- results and liveness -----------------------------------------------------------------------
    result_ttl: int = Field(
        500, ge=-1, le=MAX_TTL_S, description="Seconds a successful job's result is kept (0: discard, -1: forever).",
        json_schema_extra=_cli("--results-ttl", metavar="SECONDS"))  # fmt: skip
    worker_ttl: int = Field(
        420, ge=1, description="Seconds the worker's Redis key outlives its last heartbeat while idle.",
        json_schema_extra=_cli("--worker-ttl", metavar="SECONDS"))  # fmt: skip
    job_monitoring_interval: int = Field(
        30, ge=1, description="rq compatibility: the longest gap between heartbeats of a busy worker "
        "(workerd heartbeats every HEARTBEAT_INTERVAL, which is never longer).",
        json_schema_extra=_cli("--job-monitoring-interval", metavar="SECONDS"))  # fmt: skip
    heartbeat_interval: float = Field(
        3.0, gt=0, le=60, description="Seconds between heartbeats. A job's lease is 2 heartbeats + 1 s: the "
        "jobs of a worker that died are back in their queue within about 2-3 intervals.",
        json_schema_extra=_cli("--heartbeat-interval", metavar="SECONDS"))  # fmt: skip
    abandoned_max_attempts: int = Field(
        3, ge=1, description="A job whose worker died this many times is failed as a possible poison pill "
        "instead of being requeued again.",
        json_schema_extra=_cli("--abandoned-max-attempts", metavar="N"))  # fmt: skip
    maintenance_interval: int = Field(
        600, ge=1, description="Seconds between registry clean-ups (rq compatibility).",
        json_schema_extra=_cli("--maintenance-interval", metavar="SECONDS"))  # fmt: skip

    # -- job handling -------------------------------------------------------------------------------
    serializer: str = Field(
        "pickle", description="'pickle', 'json', or a dotted path; must match the producers'.",
        json_schema_extra=_cli("-S", "--serializer", metavar="SERIALIZER"))  # fmt: skip
    exception_handlers: CommaList = Field(
        default_factory=list, description="Dotted paths of handlers called (job, exc_type, exc_value, tb) "
        "on failure, in order; one that returns False stops the chain.",
        json_schema_extra=_cli("--exception-handler", metavar="PATH", repeat=True))  # fmt: skip
    disable_default_exception_handler: bool = Field(
        False, description="Do not record failures in the failed registry and result stream.",
        json_schema_extra=_cli("-d", "--disable-default-exception-handler"))  # fmt: skip
    death_penalty_class: str = Field(
        "workerd.execution.UnixSignalDeathPenalty", description="How a job past its timeout is stopped "
        "inside the horse (a BaseDeathPenalty subclass); the worker SIGKILLs it shortly after anyway.",
        json_schema_extra=_cli("--death-penalty-class", metavar="CLASS"))  # fmt: skip
    worker_class: str | None = Field(
        None, description="Dotted path of a workerd.Worker subclass to run.",
        json_schema_extra=_cli("-w", "--worker-class", metavar="CLASS"))  # fmt: skip
    job_class: str | None = Field(
        None, description="Dotted path of the worker's job class (Worker.job_class); a subclass of "
        "rq's Job is the class of what rq.get_current_job() returns inside a job.",
        json_schema_extra=_cli("-j", "--job-class", metavar="CLASS"))  # fmt: skip
    queue_class: str | None = Field(
        None, description="Dotted path of the worker's queue class (Worker.queue_class, as rq's; "
        "workerd's worker fetches with its own scripts, not through it).",
        json_schema_extra=_cli("--queue-class", metavar="CLASS"))  # fmt: skip

    # -- logging and reporting ----------------------------------------------------------------------
    log_level: str = Field(
        "INFO", description="DEBUG, INFO, WARNING, ERROR or CRITICAL.",
        json_schema_extra=_cli("--logging_level", "--logging-level", "-l", metavar="LEVEL"))  # fmt: skip
    log_format: str = Field(
        "%(asctime)s %(message)s", description="logging format string, or json: one JSON object per line.",
        json_schema_extra=_cli("--log-format", metavar="FORMAT"))  # fmt: skip
    date_format: str = Field(
        "%H:%M:%S", description="strftime format of %(asctime)s.",
        json_schema_extra=_cli("--date-format", metavar="FORMAT"))  # fmt: skip
    dict_config: dict[str, Any] | None = Field(
        None, description="A logging.config.dictConfig dictionary; replaces the format settings."
    )
    disable_job_desc_logging: bool = Field(
        False, description="Log job ids instead of job descriptions (which may hold arguments).",
        json_schema_extra=_cli("--disable-job-desc-logging"))  # fmt: skip
    sentry_dsn: SecretStr | None = Field(
        None, description="Report job exceptions to Sentry.",
        json_schema_extra=_cli("--sentry-dsn", metavar="DSN"))  # fmt: skip
    pid: str | None = Field(
        None, description="Write the process id to this file.", json_schema_extra=_cli("--pid", metavar="FILE")
    )
    log_file: str | None = Field(
        None, description="Also log to this file (USR1 to the master reopens it after logrotate moved it).",
        json_schema_extra=_cli("--log-file", metavar="FILE"))  # fmt: skip
    log_file_max_mib: int = Field(
        100, ge=0, description="Rotate the log file at this size (MiB), to FILE.size-1, FILE.size-2, ... "
        "0: never (set 0 when logrotate rotates it; see docs/OBSERVABILITY.md).")  # fmt: skip
    log_file_backups: int = Field(5, ge=0, description="Rotated log files (FILE.size-N) to keep.")

    # -- the pool (master) -------------------------------------------------------------------------
    workers: int | None = Field(
        None, ge=1, description="Run a master that keeps this many workers alive. Unset (and no groups): "
        "a single worker process, exactly like rq worker.",
        json_schema_extra=_cli("--workers", metavar="N"))  # fmt: skip
    groups: list[dict[str, Any]] = Field(
        default_factory=list, description="Worker groups ([[groups]] tables): each has a name, a worker "
        "count (workers) and any of these settings (queues, redis_url, limits...) overriding the top-level "
        "ones; or a daemon class (daemon = 'pkg.Class') instead of queues.")  # fmt: skip
    execution: Literal["fork", "inprocess"] = Field(
        "fork", description="fork: a fresh horse process per job. inprocess: the worker runs jobs itself "
        "(for many small jobs); limits recycle the worker.",
        json_schema_extra=_cli("--execution", metavar="MODE"))  # fmt: skip
    max_jobs_jitter: int = Field(
        0, ge=0, description="Add 0..N to each worker's MAX_JOBS so workers do not all recycle at once.",
        json_schema_extra=_cli("--max-jobs-jitter", metavar="N"))  # fmt: skip
    max_age: float | None = Field(
        None, gt=0, description="Replace a worker after this many seconds (after its current job).",
        json_schema_extra=_cli("--max-age", metavar="SECONDS"))  # fmt: skip
    soft_memory_limit: int | None = Field(
        None, ge=1, description="MiB of a process's own memory (USS). A worker over it is replaced after its "
        "job; a horse over it gets SIGTERM, then SIGKILL after MEMORY_KILL_GRACE.",
        json_schema_extra=_cli("--soft-memory-limit", metavar="MIB"))  # fmt: skip
    hard_memory_limit: int | None = Field(
        None, ge=1, description="MiB of a process's own memory (USS). Over it: SIGKILL at once; the job fails "
        "with a reason naming the limit and the size measured.",
        json_schema_extra=_cli("--hard-memory-limit", metavar="MIB"))  # fmt: skip
    memory_kill_grace: float = Field(
        5.0, ge=0, description="Seconds between SIGTERM and SIGKILL for a horse over the soft memory limit."
    )
    memory_check_interval: float = Field(
        0.25, gt=0, le=10, description="Seconds between memory checks of each worker and horse."
    )
    graceful_timeout: float = Field(
        30.0, ge=0, description="On SIGTERM, seconds running jobs get to finish before they are killed "
        "and put back on their queues.",
        json_schema_extra=_cli("--graceful-timeout", metavar="SECONDS"))  # fmt: skip
    boot_failure_limit: int = Field(
        5, ge=1, description="Workers of a group that die this many times in a row before they are ready "
        "stop the master (exit code 3) instead of respawning forever.")  # fmt: skip

    # -- observability ------------------------------------------------------------------------------
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="Serve Prometheus metrics (/metrics) and a health probe (/health) "
        "over HTTP on this port, from the master (or the single worker). Unset: off.",
        json_schema_extra=_cli("--metrics-port", metavar="PORT"))  # fmt: skip
    metrics_host: str = Field(
        "127.0.0.1", description="Address the metrics port listens on (0.0.0.0 for every interface).",
        json_schema_extra=_cli("--metrics-host", metavar="ADDRESS"))  # fmt: skip

    # -- untrusted Redis ----------------------------------------------------------------------------
    allowed_functions: CommaList = Field(
        default_factory=list, description="Patterns of the dotted function paths jobs may run (e.g. "
        "myapp.tasks.*: * and ? stay within one name, ** is any depth); callbacks too. Checked before importing, "
        "and what the import resolves to is checked again before it is called: anything else fails. Needs "
        "SERIALIZER = 'json' (pickle data runs code when decoded); jobs on a bound method or callable "
        "instance are refused. Unset: any function (Redis is trusted). See docs/SECURITY.md.",
        json_schema_extra=_cli("--allowed-function", metavar="PATTERN", repeat=True))  # fmt: skip

    @field_validator("queues", "path", "preload", "exception_handlers", "allowed_functions", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _rq_worker_classes(self) -> Settings:
        """rq's stock worker classes, as existing command lines name them (`-w rq.SimpleWorker`),
        mean workerd's own worker in the matching execution mode."""
        mode = _RQ_WORKER_CLASSES.get(self.worker_class or "")
        if mode is not None:
            self.worker_class = None
            self.execution = mode  # type: ignore[assignment]
        return self

    def updated(self, changes: dict[str, Any]) -> Settings:
        """A copy with `changes` applied, validated like any other source (model_copy(update=) skips
        validation: Worker(max_jobs="abc") was accepted and failed later, far from its cause)."""
        return type(self).model_validate({**self.model_dump(), **changes})

    @property
    def uses_tls(self) -> bool:
        if self.redis_url is not None:
            return self.redis_url.get_secret_value().startswith("rediss://")
        return self.redis_ssl and not self.sentinel

    @property
    def tls_options(self) -> dict[str, Any]:
        """The TLS options that are set, as redis-py's keyword arguments (ssl_ca_certs=...)."""
        options = {"ssl_ca_certs": self.redis_ssl_ca_certs, "ssl_ca_data": self.redis_ssl_ca_data,
                   "ssl_certfile": self.redis_ssl_certfile, "ssl_keyfile": self.redis_ssl_keyfile}  # fmt: skip
        chosen = {key: str(value) for key, value in options.items() if value is not None}
        if self.redis_ssl_cert_reqs != "required":
            chosen["ssl_cert_reqs"] = self.redis_ssl_cert_reqs
        return chosen

    @field_validator("queues")
    @classmethod
    def _check_queues(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one queue is needed")
        return [validate_queue_name(name) for name in value]

    @field_validator("log_level", mode="before")
    @classmethod
    def _check_level(cls, value: Any) -> Any:
        if isinstance(value, str):
            level = {"WARN": "WARNING", "FATAL": "CRITICAL"}.get(value.upper(), value.upper())  # logging's aliases
            if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
                raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
            return level
        return value

    @property
    def lease_s(self) -> float:
        """How long a job stays claimed without a heartbeat before it counts as abandoned."""
        return 2 * self.effective_heartbeat_s + 1

    @property
    def effective_heartbeat_s(self) -> float:
        return min(self.heartbeat_interval, float(self.job_monitoring_interval))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _FileSource(settings_cls))


# The values read from the settings file, for the duration of one Settings(...) call (see
# workerd.config.build_settings): a source of its own, so that the environment beats the file.
FILE_VALUES: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("workerd_file_values", default=None)


class _FileSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return (FILE_VALUES.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(FILE_VALUES.get() or {})


SECRET_FIELDS = frozenset(
    name for name, info in Settings.model_fields.items() if info.annotation in (SecretStr, SecretStr | None)
)

# The settings the master reads once, at start: a reload (HUP) keeps their old values and logs their
# names. metrics_*: the listening socket; pid: the file written at start (and removed at exit);
# name: the base of every worker's name; path: sys.path, extended before the first import.
RESTART_ONLY = frozenset({"metrics_port", "metrics_host", "pid", "name", "path"})


def changed_settings(old: Settings, new: Settings) -> set[str]:
    """The names of the settings whose values differ (secrets compare by value)."""
    return {name for name in Settings.model_fields if getattr(old, name) != getattr(new, name)}

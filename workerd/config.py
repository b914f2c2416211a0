"""Loading settings: files (TOML or a Python module), the environment, the command line.

Errors name where the bad value came from (file and key, environment variable, or flag), the value
(masked when secret) and what is wrong, and carry exit code 78 (workerd.errors.ConfigError).
"""

from __future__ import annotations

import contextlib
import difflib
import grp
import importlib
import importlib.util
import json
import logging
import os
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr, ValidationError

from workerd.errors import ConfigError
from workerd.settings import ENV_PREFIX, FILE_VALUES, SECRET_FIELDS, Settings
from workerd.untrusted import settings_problem

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

log = logging.getLogger("workerd.config")

FIELD_NAMES = tuple(Settings.model_fields)
# RQ reads these from the environment when no settings module is given (docs/PROTOCOL.md §9.1).
_RQ_ENVIRONMENT = ("REDIS_URL", "REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_PASSWORD", "REDIS_SSL")


@dataclass
class Layers:
    """The raw values of each source, before validation; kept to explain where a value came from."""

    cli: dict[str, Any] = field(default_factory=dict)
    file: dict[str, Any] = field(default_factory=dict)
    file_label: str = ""
    # Keys whose value came from one of rq's environment names (RQ_REDIS_URL standing in for --url,
    # or REDIS_* read when no settings file is given), with that variable's name.
    rq_names: dict[str, str] = field(default_factory=dict)

    def source_of(self, key: str) -> str:
        if key in self.cli:
            if key in self.rq_names:
                return f"environment variable {self.rq_names[key]} (rq's name)"
            return "the command line"
        env_name = _environment_name(key)
        if env_name is not None:
            return f"environment variable {env_name}"
        if key in self.file:
            if key in self.rq_names:
                return f"environment variable {self.rq_names[key]} (rq's name)"
            return f"{self.file_label}: key '{key}'"
        return "the default"

    def raw_value(self, key: str) -> Any:
        """The value as given by the source that won, before validation."""
        if key in self.cli:
            return self.cli[key]
        env_name = _environment_name(key)
        if env_name is not None:
            return os.environ[env_name]
        return self.file.get(key)


def _environment_name(key: str) -> str | None:
    """The WORKERD_<NAME> variable that sets `key`, if any (matched case-insensitively, as pydantic does)."""
    wanted = f"{ENV_PREFIX}{key}".upper()
    for name in os.environ:
        if name.upper() == wanted:
            return name
    return None


def _suggest(name: str) -> str:
    matches = difflib.get_close_matches(name.lower(), FIELD_NAMES, n=1, cutoff=0.6)
    return f"; did you mean '{matches[0]}'?" if matches else ""


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}; fix the file (see https://toml.io)") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the settings file: {exc.strerror}") from exc
    unknown = [key for key in data if key.lower() not in FIELD_NAMES]
    if unknown:
        key = unknown[0]
        raise ConfigError(
            f"{path}: unknown key '{key}'{_suggest(key)} (settings are listed by `workerd --help` "
            "and in docs/CONFIGURATION.md)"
        )
    values = {key.lower(): value for key, value in data.items()}
    problems = [f"{key} = {_describe_value(key, value)}: {why}" for key, value in values.items()
                if (why := _toml_type_problem(key, value)) is not None]  # fmt: skip
    if problems:
        raise ConfigError(f"{path}: invalid settings:\n  " + "\n  ".join(problems))
    return values


# A TOML value already has a type, so it must be the one the setting declares: pydantic's lax mode
# would read `max_jobs = true` as 1 (a recycle after every job). Environment variables and flags
# are strings by nature and keep the lax conversion.
_KIND_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
_VALUE_KINDS: dict[type, set[type]] = {bool: {bool}, int: {int, float}, float: {float}, str: {str}}


def _scalar_kinds(annotation: Any) -> set[type] | None:
    """The scalar types a setting accepts (Optional and Literal unwrapped); None if not only scalars."""
    if annotation is SecretStr:
        return {str}
    if annotation in _KIND_NAMES:
        return {annotation}
    if typing.get_origin(annotation) is typing.Literal:
        return {type(choice) for choice in typing.get_args(annotation)}
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds: set[type] = set()
        for arg in typing.get_args(annotation):
            if arg is type(None):
                continue
            found = _scalar_kinds(arg)
            if found is None:
                return None
            kinds |= found
        return kinds
    return None


def _toml_type_problem(key: str, value: Any) -> str | None:
    expected = _scalar_kinds(Settings.model_fields[key].annotation)
    if not expected or type(value) not in _VALUE_KINDS or _VALUE_KINDS[type(value)] & expected:
        return None
    wanted = " or ".join(_KIND_NAMES[kind] for kind in sorted(expected, key=list(_KIND_NAMES).index))
    return f"expected {wanted}, got {_KIND_NAMES[type(value)]}"


def _check_file(spec: str) -> Path:
    path = Path(spec)
    if path.is_dir():
        raise ConfigError(f"{spec}: is a directory; give the settings file itself")
    if not path.is_file():
        raise ConfigError(f"{spec}: settings file not found (the current directory is {os.getcwd()})")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{spec}: settings file is not readable by this user (uid {os.getuid()})")
    return path


def _import_settings_module(spec: str) -> ModuleType:
    path = Path(spec)
    try:
        if spec.endswith(".py") or path.is_file() or os.sep in spec:  # a path; dotted names have no '/'
            _check_file(spec)
            module_spec = importlib.util.spec_from_file_location(f"workerd_settings_{path.stem}", path)
            if module_spec is None or module_spec.loader is None:
                raise ConfigError(f"{spec}: cannot load it as a Python module")
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
            return module
        return importlib.import_module(spec)
    except ConfigError:
        raise
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"settings module '{spec}' not found ({exc}); give a path to a .toml or .py file, or a module "
            "importable from the current directory or --path"
        ) from exc
    # SystemExit too: a settings module that calls sys.exit() would otherwise end workerd silently
    # with that code. KeyboardInterrupt stays an interrupt (Ctrl-C during start-up).
    except (Exception, SystemExit) as exc:
        raise ConfigError(f"settings module '{spec}' {import_failure(exc)}") from exc


def import_failure(exc: BaseException) -> str:
    """How a user's module failed while being imported, for a config error naming that module."""
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r}) while being imported; a settings or PRELOAD module must not exit"
    return f"raised on import: {type(exc).__name__}: {exc}"


def _read_module(spec: str) -> dict[str, Any]:
    module = _import_settings_module(spec)
    values: dict[str, Any] = {}
    for name in dir(module):
        if not name.isupper() or name.startswith("_"):
            continue
        key = name.lower()
        if key in FIELD_NAMES:
            values[key] = getattr(module, name)
        else:
            # rq settings modules often hold constants of their own; rq ignores them, so we warn.
            log.warning("%s: %s is not a workerd setting and is ignored%s", spec, name, _suggest(name))
    warn_if_password_exposed(getattr(module, "__file__", None), values)
    return values


def read_settings_file(spec: str) -> dict[str, Any]:
    """A TOML file (*.toml), or a Python settings module given by path or dotted name."""
    if spec.endswith(".toml"):
        path = _check_file(spec)
        values = _read_toml(path)
        warn_if_password_exposed(str(path), values)
        return values
    return _read_module(spec)


def _holds_password(values: Mapping[str, Any]) -> bool:
    if values.get("redis_password") or values.get("sentry_dsn"):
        return True
    url = values.get("redis_url")
    if isinstance(url, str):
        try:
            parts = urlsplit(url)
            if parts.password or "pass" in parts.query.lower():
                return True
        except ValueError:
            return True  # cannot tell: assume the worst
    sentinel = values.get("sentinel")
    if isinstance(sentinel, Mapping):
        kwargs = sentinel.get("CONNECTION_KWARGS", sentinel.get("connection_kwargs", {}))
        return any("password" in str(key).lower() for key in [*sentinel, *(kwargs if isinstance(kwargs, Mapping)
                                                                            else {})])  # fmt: skip
    return False


# The group the packaged units run the service as (Group= in packaging/systemd/*.service). The
# package makes /etc/workerd root:workerd: its members reading a settings file is how the service
# reads it, not an exposure.
SERVICE_GROUP = "workerd"


def _reading_groups_allowed() -> set[int]:
    """Groups whose members may read a settings file that holds a password: root's, the running
    process's (the service's own, when it runs as the service), and the packaged units' group (when
    root runs `workerd --check` on the file the service will read)."""
    allowed = {0, os.getegid()}
    with contextlib.suppress(KeyError):  # not installed from the package: no such group
        allowed.add(grp.getgrnam(SERVICE_GROUP).gr_gid)
    return allowed


def _exposed_to(stat: os.stat_result) -> str | None:
    """Who else can read the file, or None. The owner does not count: an owner can chmod the file
    back at will, so no mode keeps a secret from them."""
    if stat.st_mode & 0o004:
        return "every user"
    if stat.st_mode & 0o040 and stat.st_gid not in _reading_groups_allowed():
        try:
            group = grp.getgrgid(stat.st_gid).gr_name
        except KeyError:
            group = str(stat.st_gid)
        return f"the members of group {group}"
    return None


def warn_if_password_exposed(path: str | None, values: Mapping[str, Any]) -> None:
    """Warn when a settings file that holds a password can be read by users other than root and
    the service's group (the world, or a group that is neither the process's nor the service's)."""
    if not path or not _holds_password(values):
        return
    try:
        stat = os.stat(path)
    except OSError:
        return
    readers = _exposed_to(stat)
    if readers:
        log.warning("%s holds a password and is readable by %s (mode %04o); restrict it: chmod 640 %s "
                    "and chgrp it to the service's group (or chmod 600 and chown it to the user workerd "
                    "runs as)", path, readers, stat.st_mode & 0o7777, path)  # fmt: skip


def _rq_environment() -> dict[str, str]:
    """rq reads REDIS_URL, REDIS_HOST, ... from the environment when no settings module is given:
    key -> variable name."""
    return {name.lower(): name for name in _RQ_ENVIRONMENT if name in os.environ}


def _warn_unknown_environment() -> None:
    for name in os.environ:
        if name.startswith(ENV_PREFIX) and name[len(ENV_PREFIX) :].lower() not in FIELD_NAMES:
            key = name[len(ENV_PREFIX) :]
            log.warning("environment variable %s is not a workerd setting and is ignored%s",
                        name, _suggest(key))  # fmt: skip


def _describe_value(key: str, value: Any) -> str:
    if key in SECRET_FIELDS:
        return "'********'"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def build_settings(cli_values: Mapping[str, Any], config_spec: str | None) -> tuple[Settings, Layers]:
    """Validate all layers into Settings. Raises ConfigError naming source, key, value and reason."""
    layers = Layers(cli={k: v for k, v in cli_values.items() if v is not None})
    if config_spec:
        # As rq's -P (default '.'): a settings module given by dotted name is looked up there.
        for directory in reversed(layers.cli.get("path") or ["."]):
            if directory not in sys.path:
                sys.path.insert(0, directory)
        layers.file = read_settings_file(config_spec)
        layers.file_label = config_spec
    else:
        layers.rq_names = _rq_environment()
        layers.file = {key: os.environ[name] for key, name in layers.rq_names.items()}
        layers.file_label = "the environment"
    if "redis_url" not in layers.cli and os.environ.get("RQ_REDIS_URL"):
        layers.cli["redis_url"] = os.environ["RQ_REDIS_URL"]  # rq's environment name for --url
        layers.rq_names["redis_url"] = "RQ_REDIS_URL"
    _warn_unknown_environment()
    token = FILE_VALUES.set(layers.file)
    try:
        settings = Settings(**layers.cli)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = str(error["loc"][0]) if error["loc"] else "?"
            value = layers.raw_value(key) if key in FIELD_NAMES else error.get("input")
            problems.append(f"{layers.source_of(key)}: {key} = {_describe_value(key, value)}: {error['msg']}")
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems)) from None
    finally:
        FILE_VALUES.reset(token)
    problems = [f"{layers.source_of(key)}: {key} = {_describe_value(key, layers.raw_value(key))}: {reason}"
                for key, reason in _check_values(settings)]  # fmt: skip
    if problems:
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems))
    return settings, layers


_URL_SCHEMES = ("redis", "rediss", "unix")


def _check_values(settings: Settings) -> list[tuple[str, str]]:
    """Checks pydantic's types cannot express; found here rather than as a crash once started."""
    problems = []
    untrusted_problem = settings_problem(settings.serializer, settings.allowed_functions)
    if untrusted_problem is not None:
        problems.append(("allowed_functions", untrusted_problem))
    if settings.redis_url is not None:
        scheme = urlsplit(settings.redis_url.get_secret_value()).scheme
        if scheme not in _URL_SCHEMES:
            problems.append(("redis_url", "must start with redis://, rediss:// or unix://"))
    if settings.tls_options and not settings.uses_tls:
        key = "redis_" + next(iter(settings.tls_options))
        why = ("set, but the connection does not use TLS: set REDIS_SSL = true, use a rediss:// URL, or remove "
               "it (with SENTINEL, give TLS options in its CONNECTION_KWARGS)")  # fmt: skip
        problems.append((key, why))
    if settings.pid:
        directory = os.path.dirname(os.path.abspath(settings.pid))
        if not os.path.isdir(directory):
            problems.append(("pid", f"directory {directory} does not exist"))
        elif not os.access(directory, os.W_OK):
            problems.append(("pid", f"directory {directory} is not writable by this user"))
    return problems


def mask_url(url: str, mask_user: bool = False) -> str:
    """redis://user:secret@host/0 -> redis://user:***@host/0; a `password=` query parameter too.

    With mask_user (a Sentry DSN, whose key is the user part) the user is masked as well."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # not a URL we can take apart: show nothing of it rather than a secret
        return "***"
    netloc = parts.netloc
    if parts.username is not None or parts.password is not None:
        user = "***" if mask_user else (parts.username or "")
        host = parts.hostname or ""
        if port:
            host = f"{host}:{port}"
        netloc = f"{user}:***@{host}" if parts.password is not None else f"{user}@{host}"
    query = "&".join(
        f"{item.split('=', 1)[0]}=***" if "pass" in item.split("=", 1)[0].lower() else item
        for item in parts.query.split("&")
    ) if parts.query else ""  # fmt: skip
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _mask(value: Any, key: str = "") -> Any:
    if isinstance(value, SecretStr):
        secret = value.get_secret_value()
        return mask_url(secret, mask_user=key == "sentry_dsn") if "://" in secret else "***"
    if isinstance(value, dict):
        return {k: ("***" if "password" in str(k).lower() else _mask(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_mask(v) for v in value]
    return value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def render_settings(settings: Settings, layers: Layers) -> str:
    """The effective settings as TOML, passwords masked, each line saying where its value came from."""
    lines = []
    for key in FIELD_NAMES:
        value = _mask(getattr(settings, key), key)
        source = f"  # {layers.source_of(key)}"
        if value is None:
            lines.append(f"# {key} is unset{source}")
        else:
            lines.append(f"{key} = {_toml_value(value)}{source}")
    return "\n".join(lines) + "\n"

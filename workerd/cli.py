"""The `workerd` command: a drop-in for `rq worker`, its options generated from workerd.settings.

This is an edge: the only place (with the supervisor's top level) that turns errors into exit codes.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from workerd import __version__
from workerd.config import build_settings, render_settings
from workerd.errors import ConfigError, ExitCode, WorkerdError
from workerd.logs import setup_logging
from workerd.settings import ENV_PREFIX, Settings
from workerd.utils import import_attribute

log = logging.getLogger("workerd.cli")

SUBCOMMANDS = ("info", "health", "suspend", "resume")

DESCRIPTION = """\
Run workers for RQ-compatible Redis job queues. Listens on QUEUE... (highest priority first;
default: the QUEUES setting, else 'default'). Every option of `rq worker` is accepted with the
same meaning. Each option can also be set in the settings file (-c, TOML or a Python module) and
in the environment as WORKERD_<NAME>; the command line wins over the environment, which wins over
the file.
"""

EPILOG = """\
subcommands: `workerd info [QUEUE...]` shows queues and workers (like rq info); `workerd health` exits
0 or 1 (a probe for containers); `workerd suspend [--duration S]` / `workerd resume` stop and restart
the taking of new jobs by every worker, workerd's and rq's (like rq suspend/resume). Each takes -u/-c
and --help. A queue literally named like a subcommand is given after `--` (workerd -- info).

exit codes: 0 done or stopped; 1 runtime error; 2 bad command line; 3 workers could not boot; 69 Redis
unreachable at start (burst mode); 70 internal error; 71 metrics port in use; 77 Redis refused the
credentials; 78 invalid settings, or Redis's TLS certificate failed verification (do not restart; fix them).
"""


def _help_for(name: str, info: Any) -> str:
    default = info.get_default(call_default_factory=True)
    if default is None or default == []:
        shown = "unset"
    elif isinstance(default, bool):
        shown = "on" if default else "off"
    elif isinstance(default, list):
        shown = ",".join(str(item) for item in default)
    else:
        shown = str(default)
    text = f"{info.description} [default: {shown}; setting {name.upper()}; env {ENV_PREFIX}{name.upper()}]"
    return text.replace("%", "%%")  # argparse %-formats help strings; log formats contain '%('


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workerd", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("queue_args", nargs="*", metavar="QUEUE",
                        help="queues to listen on, highest priority first [default: the QUEUES setting, "
                        "else 'default'; env WORKERD_QUEUES]")  # fmt: skip
    parser.add_argument("-c", "--config", metavar="FILE|MODULE",
                        help="settings file: a .toml file, or a Python module (path or dotted name, "
                        "looked up on --path) [default: none; env RQ_CONFIG]")  # fmt: skip
    parser.add_argument("--check", action="store_true", help="validate the settings and imports, then exit 0")
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective settings (passwords masked) and exit")  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    parser.add_argument("-q", "--quiet", action="store_true", help="log at WARNING level")
    parser.add_argument("--version", action="version", version=f"workerd {__version__}")
    group = parser.add_argument_group("settings")
    for name, info in Settings.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        flags = extra.get("flags")
        if not isinstance(flags, list) or not flags:
            continue
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": _help_for(name, info)}
        if info.annotation is bool:
            kwargs["action"] = "store_true"
        elif extra.get("repeat"):
            kwargs.update(action="append", metavar=extra.get("metavar"))
        else:
            kwargs["metavar"] = extra.get("metavar")
        group.add_argument(*[str(flag) for flag in flags], **kwargs)
    return parser


def _cli_values(args: argparse.Namespace) -> dict[str, Any]:
    values = {name: getattr(args, name) for name in Settings.model_fields if hasattr(args, name)}
    if args.queue_args:
        values["queues"] = args.queue_args
    if args.verbose and args.quiet:
        raise ConfigError("-v/--verbose and -q/--quiet cannot be used together")
    if args.verbose:
        values["log_level"] = "DEBUG"
    elif args.quiet:
        values["log_level"] = "WARNING"
    return values


def check_imports(settings: Settings, preload: bool = True) -> None:
    """Import what the settings name (classes, handlers, preloaded modules): errors are config errors.

    preload=False for a master: it leaves PRELOAD to each generation's zygote (workerd.zygote), whose
    import fails with the same error, so that a reload can import the modules afresh."""
    for directory in reversed(settings.path):
        if directory not in sys.path:
            sys.path.insert(0, directory)
    dotted = [settings.worker_class, settings.job_class, settings.queue_class, settings.connection_class,
              settings.death_penalty_class, *settings.exception_handlers]  # fmt: skip
    if settings.serializer not in ("pickle", "json"):
        dotted.append(settings.serializer)
    for path in filter(None, dotted):
        try:
            import_attribute(path)
        except Exception as exc:
            raise ConfigError(f"cannot import '{path}': {type(exc).__name__}: {exc}") from exc
    if settings.worker_class:
        from workerd.worker import Worker

        found = import_attribute(settings.worker_class)
        if not (isinstance(found, type) and issubclass(found, Worker)):
            raise ConfigError(
                f"worker_class = '{settings.worker_class}' is not a subclass of workerd.Worker (rq's "
                "rq.Worker and rq.SimpleWorker are understood; other rq worker classes must be ported)"
            )
    if not preload:
        return
    from workerd.zygote import import_preloaded

    for module in settings.preload:
        import_preloaded(module, settings)


def run(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:  # a queue named info or health: `workerd -- info`
        from workerd import info

        return info.main(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    config = args.config or os.environ.get("RQ_CONFIG") or None  # rq's environment name for -c
    settings, layers = build_settings(_cli_values(args), config)
    if args.print_config:
        sys.stdout.write(render_settings(settings, layers))
        return ExitCode.OK
    setup_logging(settings)
    from workerd.supervisor import Master, build_groups, uses_master

    check_imports(settings, preload=args.check or not uses_master(settings))

    groups = build_groups(settings)
    if args.check:
        print(
            f"workerd: settings OK ({layers.file_label or 'no settings file'}; "
            f"{', '.join(f'{g.name}: {g.target}' for g in groups) if uses_master(settings) else 'single worker'})"
        )
        return ExitCode.OK
    if uses_master(settings):
        cli_values = _cli_values(args)
        return Master(settings, reload=lambda: build_settings(cli_values, config)[0]).run()
    from workerd.worker import Worker

    worker_class: type[Worker] = import_attribute(settings.worker_class) if settings.worker_class else Worker
    worker = worker_class(settings.queues, settings=settings)
    if settings.metrics_port is not None:  # no master: a process of the worker's own serves its metrics
        from workerd.metrics import serve_single_worker

        serve_single_worker(worker, settings)
    from workerd.sdnotify import follow_single_worker

    follow_single_worker(worker)  # no master to speak to systemd: the worker does (READY, WATCHDOG, STATUS)
    return worker.run()


def main(argv: Sequence[str] | None = None) -> None:
    try:
        code = run(argv)
    except WorkerdError as exc:
        print(f"workerd: error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        code = ExitCode.OK
    except Exception:
        traceback.print_exc()
        print("workerd: internal error (a bug in workerd; please report it with the traceback above)",
              file=sys.stderr)  # fmt: skip
        code = ExitCode.SOFTWARE
    sys.exit(int(code))


if __name__ == "__main__":
    main()

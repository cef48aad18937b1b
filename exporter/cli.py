"""Command line: argument parsing and wiring only.

o365-mailbox-exporter [serve] --config.file=F [--web.listen-address=:9865] [--log.level=info]
o365-mailbox-exporter check --config.file=F [--mailbox NAME] [--output table|json]
o365-mailbox-exporter --config.check --config.file=F
o365-mailbox-exporter login --config.file=F --mailbox NAME
o365-mailbox-exporter junk-review --config.file=F --mailbox NAME [--output table|json|html]
    [--ack] [--rescue UID,... --yes]
o365-mailbox-exporter oversized --config.file=F --mailbox NAME [--move-to FOLDER --yes]
o365-mailbox-exporter doctor --config.file=F --mailbox NAME
o365-mailbox-exporter import-esm PROPERTIES_FILE [--name NAME] [--password-file PATH]
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import signal
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector

from exporter import __version__
from exporter.admin import doctor, esm_import, junk_review, oversized
from exporter.auth import DeviceCodePrompt, WrongAccountError
from exporter.backoff import BackoffStore, secret_key
from exporter.config import Config, MailboxConfig, load_config
from exporter.errors import ConfigError, ExporterError
from exporter.failures import CheckFailed, Failure, force_hint, pasteable
from exporter.logs import LEVELS, setup_logging
from exporter.results import CheckResult
from exporter.runner import MailboxRunner, Watchdog
from exporter.service import Service, Shard
from exporter.web import ExporterApp, HttpLimits, make_http_server
from exporter.webconfig import WebConfig, load_web_config

log = logging.getLogger("exporter")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
ADMIN_COMMANDS = ("junk-review", "oversized", "doctor")
PROG = "o365-mailbox-exporter"


@dataclass(frozen=True, slots=True)
class CommandHelp:
    summary: str  # the one line `--help` lists
    description: str
    examples: tuple[str, ...]


# Every subcommand, in the order `--help` lists them. `serve` is the default command.
COMMAND_HELP: dict[str, CommandHelp] = {
    "serve": CommandHelp(
        "run the checks on their schedule and serve /metrics (the default command)",
        "Run every enabled check of every mailbox on its interval and serve the results on "
        "/metrics, a landing page on /, /-/healthy, /-/ready and POST /-/reload (SIGHUP "
        "reloads too). With --config.check: validate the config file and exit.",
        (
            f"{PROG} --config.file=/etc/o365-mailbox-exporter/config.yml",
            f"{PROG} --config.check --config.file=config.yml",
            f"{PROG} --config.file=config.yml --web.listen-address=127.0.0.1:9865",
        ),
    ),
    "check": CommandHelp(
        "run every enabled check once and print the results with what to do",
        "Run every enabled check once (all mailboxes, or one) and print each result, and for "
        "each failure a hint you can act on. Exit 0 when all passed, 1 when a check failed, "
        "2 on a usage or config error.",
        (
            f"{PROG} check --config.file=config.yml",
            f"{PROG} check --config.file=config.yml --mailbox servicedesk --output json",
        ),
    ),
    "login": CommandHelp(
        "sign a mailbox in with a device code (MFA accounts) and seed its token cache",
        "Start a device-code sign-in: open the URL it prints in a browser, enter the code and "
        "sign in as the mailbox's username (a private window keeps your own account out). "
        "The refresh token goes into the token cache in state_dir; another account is refused.",
        (f"{PROG} login --config.file=config.yml --mailbox servicedesk",),
    ),
    "junk-review": CommandHelp(
        "list the Junk folder for the weekly review; record it, rescue messages",
        "List the Junk folder's messages with their spam verdicts, likely false positives "
        "first. --ack records the review; --rescue moves messages back to the inbox (with "
        "--yes).",
        (
            f"{PROG} junk-review --config.file=config.yml --mailbox servicedesk",
            f"{PROG} junk-review --config.file=config.yml --mailbox servicedesk --output html "
            "> review.html",
            f"{PROG} junk-review --config.file=config.yml --mailbox servicedesk --ack",
            f"{PROG} junk-review --config.file=config.yml --mailbox servicedesk "
            "--rescue 12,15 --yes",
        ),
    ),
    "oversized": CommandHelp(
        "list inbox messages over oversized_bytes; move them out of the way",
        "List the inbox's messages larger than the mailbox's oversized_bytes; --move-to moves "
        "them to another folder (created if missing; with --yes).",
        (
            f"{PROG} oversized --config.file=config.yml --mailbox servicedesk",
            f"{PROG} oversized --config.file=config.yml --mailbox servicedesk "
            "--move-to Oversized --yes",
        ),
    ),
    "doctor": CommandHelp(
        "walk a mailbox's sign-in step by step and name the first broken step",
        "Check the secret, the authority, the token and its claims, IMAP TLS, login, the "
        "folders and SMTP one step at a time; at the first broken step, say what is wrong and "
        "how to fix it in the words of the Entra ID / Exchange Online setup. Changes nothing.",
        (f"{PROG} doctor --config.file=config.yml --mailbox servicedesk",),
    ),
    "import-esm": CommandHelp(
        "turn ESM mail settings (a .properties file) into a config snippet",
        "Read Efecte ESM platform settings or mail-task properties and print the matching "
        "mailbox config as YAML; a malformed value is reported as FILE:LINE: KEY: PROBLEM. "
        "Passwords are never copied.",
        (
            f"{PROG} import-esm esm-mail.properties",
            f"{PROG} import-esm esm-mail.properties --name servicedesk "
            "--password-file /run/secrets/servicedesk > servicedesk.yml",
        ),
    ),
}
COMMANDS = tuple(COMMAND_HELP)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # usage errors exit 2 with one line, no traceback
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _description(command: str) -> str:
    about = COMMAND_HELP[command].description
    if command != "serve":
        return textwrap.fill(about, width=80)
    width = max(len(name) for name in COMMANDS)
    return "\n".join(
        [
            "Prometheus exporter for Microsoft 365 service-desk mailboxes.",
            "",
            "commands:",
            *(f"  {name.ljust(width)}  {h.summary}" for name, h in COMMAND_HELP.items()),
            "",
            f"Run `{PROG} COMMAND --help` for a command's options and examples.",
            "",
            "serve:",
            textwrap.fill(about, width=80, initial_indent="  ", subsequent_indent="  "),
        ]
    )


def build_parser(command: str) -> argparse.ArgumentParser:
    parser = _Parser(
        prog=f"{PROG} {command}" if command != "serve" else PROG,
        usage=(
            f"{PROG} [serve] --config.file=FILE [OPTIONS]\n       {PROG} COMMAND [OPTIONS]"
            if command == "serve"
            else None
        ),
        description=_description(command),
        epilog="\n".join(["examples:", *(f"  {line}" for line in COMMAND_HELP[command].examples)]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if command != "import-esm":  # the one command that reads no config
        parser.add_argument(
            "--config.file", dest="config_file", required=True, metavar="FILE",
            help="the exporter's config file (YAML)",
        )  # fmt: skip
    parser.add_argument(
        "--log.level", dest="log_level", choices=LEVELS, default="info",
        help="log lines at this level and above go to stderr (default info)",
    )  # fmt: skip
    parser.add_argument(
        "--log.format", dest="log_format", choices=("logfmt", "json"), default="logfmt",
        help="log line format (default logfmt)",
    )  # fmt: skip
    parser.add_argument("--version", action="version", version=__version__)
    if command == "serve":
        parser.add_argument(
            "--web.listen-address", dest="listen", default=":9865", metavar="HOST:PORT",
            help="where to serve HTTP (default :9865)",
        )  # fmt: skip
        parser.add_argument(
            "--config.check",
            dest="config_check",
            action="store_true",
            help="validate the config file and exit (0 valid, 2 invalid)",
        )
        parser.add_argument(
            "--web.config.file",
            dest="web_config",
            metavar="FILE",
            help="TLS and basic auth for the HTTP endpoints (exporter-toolkit format)",
        )
        parser.add_argument(
            "--checks.max-concurrency",
            dest="max_concurrency",
            type=int,
            default=16,
            help="mailbox runs at once (default 16)",
        )
        parser.add_argument(
            "--shard",
            type=_shard,
            metavar="I/N",
            help="own only the mailboxes whose stable hash is I modulo N (0 <= I < N)",
        )
        parser.add_argument(
            "--probe.only",
            dest="probe_only",
            action="store_true",
            help="run no schedule; run a mailbox's checks when /probe?mailbox=NAME asks",
        )
    if command == "check":
        parser.add_argument("--mailbox", metavar="NAME", help="only this mailbox")
        parser.add_argument(
            "--output", choices=("table", "json"), default="table",
            help="table for people, json for scripts (stdout holds only the JSON)",
        )  # fmt: skip
    if command == "login":
        parser.add_argument(
            "--mailbox", metavar="NAME", required=True, help="the mailbox to sign in"
        )
    if command in ("check", "login", "doctor"):
        parser.add_argument(
            "--force",
            action="store_true",
            help="try a sign-in that the credential backoff (Smart Lockout guard) holds back",
        )
    _add_admin_arguments(parser, command)
    return parser


def _split_command(args: list[str]) -> tuple[str, list[str]] | None:
    """The subcommand (serve when the first word is an option) and its arguments. A first word
    that is no command is a usage error that names the nearest command (None)."""
    if not args or args[0].startswith("-"):
        return "serve", args
    word = args[0]
    if word in COMMANDS:
        return word, args[1:]
    if word == "help":  # `o365-mailbox-exporter help [COMMAND]`
        topic = args[1] if len(args) > 1 and args[1] in COMMANDS else "serve"
        return topic, ["--help"]
    close = difflib.get_close_matches(word, COMMANDS, n=1, cutoff=0.5)
    suggestion = f"did you mean '{close[0]}'?" if close else f"commands: {', '.join(COMMANDS)}"
    print(f"{PROG}: error: unknown command '{word}'; {suggestion}", file=sys.stderr)
    print(f"Run `{PROG} --help` for the list of commands.", file=sys.stderr)
    return None


def _uid_list(text: str) -> tuple[int, ...]:
    try:
        uids = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: UIDs are numbers, like 12,15") from None
    if not uids or any(uid <= 0 for uid in uids):
        raise argparse.ArgumentTypeError(f"{text!r}: UIDs are positive numbers, like 12,15")
    return tuple(dict.fromkeys(uids))


def _add_admin_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    yes = "change the mailbox (without it: only say what would change)"
    if command in ADMIN_COMMANDS:
        parser.add_argument("--mailbox", metavar="NAME", required=True)
    if command == "junk-review":
        parser.add_argument("--output", choices=("table", "json", "html"), default="table")
        parser.add_argument("--ack", action="store_true", help="record this review")
        parser.add_argument(
            "--rescue", type=_uid_list, default=(), metavar="UID,...",
            help="move these Junk messages back to the inbox (with --yes)",
        )  # fmt: skip
        parser.add_argument("--yes", action="store_true", help=yes)
    if command == "oversized":
        parser.add_argument("--output", choices=("table", "json"), default="table")
        parser.add_argument(
            "--move-to", dest="move_to", metavar="FOLDER",
            help="move the oversized messages to this folder (created if missing; with --yes)",
        )  # fmt: skip
        parser.add_argument("--yes", action="store_true", help=yes)
    if command == "doctor":
        parser.add_argument("--output", choices=("table", "json"), default="table")
    if command == "import-esm":
        parser.add_argument("properties_file", metavar="PROPERTIES_FILE")
        parser.add_argument("--name", metavar="NAME", help="the mailbox's name in the config")
        parser.add_argument(
            "--password-file", dest="password_file", metavar="PATH",
            help="password_file for the snippet (default: a placeholder)",
        )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    split = _split_command(list(sys.argv[1:] if argv is None else argv))
    if split is None:
        return EXIT_USAGE
    command, args_list = split
    args = build_parser(command).parse_args(args_list)
    setup_logging(args.log_level, args.log_format)
    if command == "import-esm":
        return esm_import.run(
            args.properties_file, args.name, args.password_file, sys.stdout, sys.stderr
        )
    try:
        config = load_config(args.config_file)
    except ConfigError as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    try:
        if command == "check":
            return run_check(config, args.mailbox, args.output, args.force)
        if command == "login":
            return run_login(config, args.mailbox, args.force)
        if command in ADMIN_COMMANDS:
            return run_admin(command, config, args)
        web_config = load_web_config(args.web_config) if args.web_config else None
        if args.config_check:
            print(f"{args.config_file}: ok ({len(config.mailboxes)} mailboxes)", file=sys.stderr)
            return EXIT_OK
        options = ServeOptions(
            listen=args.listen,
            max_concurrency=args.max_concurrency,
            web_config=web_config,
            shard=args.shard,
            scheduled=not args.probe_only,
        )
        return serve(config, Path(args.config_file), options)
    except ConfigError as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    except ExporterError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE


def _select(config: Config, name: str | None) -> list[MailboxConfig] | None:
    if name is None:
        return list(config.mailboxes)
    try:
        return [config.mailbox(name)]
    except KeyError:
        names = ", ".join(m.name for m in config.mailboxes)
        print(f"error: --mailbox {name}: no such mailbox (have: {names})", file=sys.stderr)
        return None


# -- admin tools ------------------------------------------------------------------------------
def run_admin(command: str, config: Config, args: argparse.Namespace) -> int:
    mailboxes = _select(config, args.mailbox)
    if mailboxes is None:
        return EXIT_USAGE
    mailbox = mailboxes[0]
    if command == "junk-review":
        options = junk_review.ReviewOptions(
            output=args.output, ack=args.ack, rescue=args.rescue, yes=args.yes
        )
        return junk_review.run(config, mailbox, options, sys.stdout, sys.stderr)
    if command == "oversized":
        moving = oversized.OversizedOptions(output=args.output, move_to=args.move_to, yes=args.yes)
        return oversized.run(config, mailbox, moving, sys.stdout, sys.stderr)
    return doctor.run(config, mailbox, args.output, sys.stdout, args.force)


# -- check ------------------------------------------------------------------------------------
def run_check(config: Config, mailbox_name: str | None, output: str, force: bool = False) -> int:
    mailboxes = _select(config, mailbox_name)
    if mailboxes is None:
        return EXIT_USAGE
    watchdog = Watchdog()

    def run_one(mailbox: MailboxConfig) -> list[CheckResult]:
        runner = MailboxRunner(mailbox, config.state_dir, watchdog, force=force)
        return runner.run(lambda _r: None)

    with ThreadPoolExecutor(max_workers=min(8, len(mailboxes))) as pool:
        outcomes = list(zip(mailboxes, pool.map(run_one, mailboxes), strict=True))
    passed = all(r.success for _m, results in outcomes for r in results)
    if output == "json":
        document = {
            "success": passed,
            "mailboxes": [
                {
                    "mailbox": m.name,
                    "checks": [_result_json(r, config.path, m.name) for r in results],
                }
                for m, results in outcomes
            ],
        }
        print(json.dumps(document, indent=2))
    else:
        print(_table(outcomes, config.path))
    return EXIT_OK if passed else EXIT_FAILED


def _result_json(result: CheckResult, config_file: Path, mailbox: str) -> dict[str, Any]:
    failure = result.failure
    return {
        "check": result.check,
        "success": result.success,
        "duration_seconds": round(result.duration_seconds, 4),
        "reason": failure.reason if failure else None,
        "code": failure.code if failure else None,
        "message": failure.message if failure else None,
        "hint": _hint(failure, config_file, mailbox) if failure else None,
    } | {key: value for m in result.measurements for key, value in m.as_json().items()}


def _hint(failure: Failure, config_file: Path, mailbox: str, command: str = "check") -> str:
    """The failure's remediation, its commands completed with the config file and mailbox in
    use; a held-back sign-in also says how to try now."""
    hint = failure.remediation
    if failure.reason == "backoff":
        hint = f"{hint} {force_hint(command)}"
    return pasteable(hint, config_file, mailbox)


def _iso(timestamp: float | None) -> str:
    if timestamp is None:
        return "none"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _summary(result: CheckResult) -> str:
    return "; ".join(m.summary() for m in result.measurements)


def _table(outcomes: list[tuple[MailboxConfig, list[CheckResult]]], config_file: Path) -> str:
    rows = [("MAILBOX", "CHECK", "RESULT", "TIME", "DETAIL")]
    hints: list[str] = []
    for mailbox, results in outcomes:
        for r in results:
            if r.failure is None:
                verdict, detail = "ok", _summary(r)
            else:
                code = f" {r.failure.code}" if r.failure.code else ""
                verdict, detail = f"FAIL {r.failure.reason}{code}", r.failure.message
                if r.failure.reason != "dependency":
                    hint = _hint(r.failure, config_file, mailbox.name)
                    hints.append(f"{mailbox.name}/{r.check}: {hint}")
            rows.append(
                (mailbox.name, r.check, verdict, f"{r.duration_seconds * 1000:.0f}ms", detail)
            )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
        for row in rows
    ]
    if hints:
        lines += ["", "What to do:"] + [f"  {h}" for h in hints]
    return "\n".join(line.rstrip() for line in lines)


# -- login ------------------------------------------------------------------------------------
def run_login(config: Config, mailbox_name: str, force: bool = False) -> int:
    mailboxes = _select(config, mailbox_name)
    if mailboxes is None:
        return EXIT_USAGE
    mailbox = mailboxes[0]
    if mailbox.auth.app_only:
        print(
            f"error: mailbox {mailbox.name} uses the app-only flow {mailbox.auth.flow}; "
            "there is nobody to sign in",
            file=sys.stderr,
        )
        return EXIT_USAGE
    backoff = BackoffStore(config.state_dir, mailbox.name)
    if mailbox.auth.flow == "password" and not force:
        held = backoff.holds_back("token", time.time(), secret_key(mailbox))
        if held is not None:
            hint = _hint(held, config.path, mailbox.name, command="login")
            print(f"sign-in held back: {held.message}\nhint: {hint}", file=sys.stderr)
            return EXIT_FAILED
    runner = MailboxRunner(mailbox, config.state_dir, Watchdog())
    print(
        f"Sign in as {mailbox.username} (mailbox {mailbox.name}); a private browser window "
        "keeps your own account out of it.",
        flush=True,
    )
    try:
        login = runner.auth.device_code_login(_show_device_code)
    except WrongAccountError as err:
        print(
            f"sign-in refused: {err.failure.message}\n"
            f"hint: {_hint(err.failure, config.path, mailbox.name, command='login')}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except CheckFailed as err:
        failure = err.failure
        code = f" {failure.code}" if failure.code else ""
        print(
            f"sign-in failed: {failure.reason}{code}: {failure.message}\n"
            f"hint: {_hint(failure, config.path, mailbox.name, command='login')}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    backoff.clear()  # a fresh grant is in the cache: the next run refreshes it
    print(
        f"Signed in as {login.username}; token cache seeded "
        f"(access token valid until {_iso(login.token.expires_at)})."
    )
    return EXIT_OK


def _show_device_code(prompt: DeviceCodePrompt) -> None:
    minutes = max(1, round(prompt.expires_in / 60))
    print(prompt.message, flush=True)
    print(
        f"The code is valid for {minutes} minutes (until {_iso(prompt.expires_at)}); "
        "waiting for the sign-in...",
        flush=True,
    )


# -- serve ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ServeOptions:
    listen: str = ":9865"
    max_concurrency: int = 16
    web_config: WebConfig | None = None
    shard: Shard | None = None
    scheduled: bool = True  # False: multi-target mode, checks run only through /probe


def _shard(text: str) -> Shard:
    try:
        return Shard.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def serve(config: Config, config_path: Path, options: ServeOptions) -> int:
    listen = options.listen
    service = Service(
        config_path,
        max_concurrency=options.max_concurrency,
        shard=options.shard,
        scheduled=options.scheduled,
    )
    process_metrics = CollectorRegistry()
    ProcessCollector(registry=process_metrics)
    try:
        app = ExporterApp(service, process_metrics)
        # /probe runs hold a check slot each: more probe threads than slots would only wait.
        limits = HttpLimits(slow_threads=options.max_concurrency)
        server = make_http_server(listen, app, options.web_config, limits)
    except (OSError, ValueError) as err:
        print(f"error: cannot listen on {listen}: {err}", file=sys.stderr)
        return EXIT_USAGE
    service.start(config)
    stop = threading.Event()

    def on_hup(_signum: int, _frame: object) -> None:
        threading.Thread(target=service.reload, name="reload", daemon=True).start()

    def on_term(_signum: int, _frame: object) -> None:
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    host, port = server.server_address[:2]
    log.info(
        "listening",
        extra={
            "address": f"{host!s}:{port}",
            "version": __version__,
            "mailboxes": len(service.config.mailboxes) if service.config else 0,
            "shard": f"{options.shard.index}/{options.shard.count}" if options.shard else "",
            "scheduled": options.scheduled,
        },
    )
    server.serve_forever()
    server.server_close()
    service.stop()
    log.info("stopped")
    return EXIT_OK

"""Failure classification: the contract's `reason` words, AADSTS codes and remediation hints.

Every failed check ends up as a `Failure`: a fixed reason word, a bounded `code` (an AADSTS
number, an IMAP/SMTP reply code or ""), a human message that never holds a secret, and a hint
in the words of the Entra ID / Exchange Online setup.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import ssl
from dataclasses import dataclass

REASONS = (
    "invalid_grant",
    "invalid_client",
    "consent_required",
    "interaction_required",
    "public_client_disabled",
    "throttled",
    "auth_rejected",
    "timeout",
    "connection",
    "tls",
    "protocol",
    "folder_missing",
    "dependency",
    "backoff",
    "unknown",
)

# Credential failures: retried only with exponential backoff (the Smart Lockout guard).
CREDENTIAL_REASONS = frozenset({"invalid_grant", "invalid_client", "auth_rejected"})

# A command in a hint is written in backquotes as `o365-mailbox-exporter SUBCOMMAND [OPTIONS]`;
# `pasteable()` adds the --config.file (and --mailbox) in use, so the hint can be pasted. Texts
# stay readable where nobody knows the config file (a record in the state directory).
PROGRAM = "o365-mailbox-exporter"

DEVICE_CODE_EXPIRED_HINT = (
    "The device code expired before the sign-in was approved (a code is valid for about 15 "
    "minutes): run `o365-mailbox-exporter login` again and enter the new code right away."
)
DEVICE_CODE_DECLINED_HINT = (
    "The sign-in was declined in the browser: run `o365-mailbox-exporter login` again and "
    "approve it, signed in as the mailbox's user."
)

# AADSTS code -> (reason, hint). From ../shared/FACTS.md.
AADSTS: dict[int, tuple[str, str]] = {
    7000218: (
        "public_client_disabled",
        "Enable 'Allow public client flows' in the app registration "
        "(Authentication > Advanced settings).",
    ),
    7000215: (
        "invalid_client",
        "The client secret is invalid: create a new secret and copy its Value, not its ID.",
    ),
    7000222: (
        "invalid_client",
        "The client secret has expired: create a new secret and copy its Value.",
    ),
    700027: (
        "invalid_client",
        "The certificate assertion was refused: upload the certificate to the app registration.",
    ),
    50126: ("invalid_grant", "Wrong username or password: fix the password file."),
    50053: (
        "invalid_grant",
        "The account is locked (Smart Lockout) or sign-in is blocked: fix the password first, "
        "wait, then check the sign-in logs.",
    ),
    50055: ("invalid_grant", "The password has expired: reset it and update the password file."),
    50057: ("invalid_grant", "The user account is disabled: re-enable it."),
    50034: ("invalid_grant", "The user is not in this tenant: check username and tenant_id."),
    50076: (
        "interaction_required",
        "MFA is required: exclude the account from the policy, or move to device_code "
        "(then run `o365-mailbox-exporter login`) or an app-only flow.",
    ),
    50079: (
        "interaction_required",
        "MFA registration is required: exclude the account, or move to device_code or app-only.",
    ),
    53003: (
        "interaction_required",
        "Conditional Access blocked the sign-in: exclude the account, or move to device_code "
        "or app-only.",
    ),
    65001: (
        "consent_required",
        "No consent: Grant admin consent for the tenant (API permissions).",
    ),
    700016: (
        "invalid_client",
        "The application was not found in the tenant: check client_id, tenant_id and "
        "authority_host.",
    ),
    90002: ("invalid_client", "The tenant was not found: check tenant_id and authority_host."),
    70011: (
        "unknown",
        "Invalid scope: use full resource URLs (https://outlook.office365.com/IMAP.AccessAsUser.All)"
        " or https://outlook.office365.com/.default for app-only.",
    ),
    700082: (
        "invalid_grant",
        "The refresh token expired after 90 days without use: sign in again: run "
        "`o365-mailbox-exporter login`.",
    ),
    50173: (
        "invalid_grant",
        "The grant was revoked (password changed or reset): sign in again (run "
        "`o365-mailbox-exporter login`) or update the password file.",
    ),
    # The device-code flow (`login`): MSAL stops polling when the code's lifetime is over and
    # returns the last answer, "authorization pending" (70016); Entra ID answers a code used
    # after its lifetime with 70019.
    70016: ("interaction_required", DEVICE_CODE_EXPIRED_HINT),
    70019: ("interaction_required", DEVICE_CODE_EXPIRED_HINT),
}

# Device-code answers without a known AADSTS code, by their OAuth `error` (RFC 8628 3.5).
DEVICE_CODE_ERRORS: dict[str, str] = {
    "expired_token": DEVICE_CODE_EXPIRED_HINT,
    "code_expired": DEVICE_CODE_EXPIRED_HINT,
    "authorization_declined": DEVICE_CODE_DECLINED_HINT,
    "access_denied": DEVICE_CODE_DECLINED_HINT,
}

# OAuth2 `error` field -> reason, for codes we do not know.
_OAUTH_ERRORS = {
    "invalid_grant": "invalid_grant",
    "invalid_client": "invalid_client",
    "unauthorized_client": "invalid_client",
    "consent_required": "consent_required",
    "interaction_required": "interaction_required",
    "temporarily_unavailable": "throttled",
    "slow_down": "throttled",
}

REASON_HINTS: dict[str, str] = {
    "invalid_grant": "The sign-in was refused: check the username and the password file.",
    "invalid_client": "The app registration refused the client: check client_id and its secret.",
    "consent_required": "Grant admin consent for the tenant (API permissions).",
    "interaction_required": "Sign in interactively: run `o365-mailbox-exporter login`, or move "
    "to an app-only flow.",
    "public_client_disabled": AADSTS[7000218][1],
    "throttled": "Entra ID is throttling sign-ins: the exporter waits for Retry-After.",
    "auth_rejected": "The server refused the token: check the IMAP/SMTP permissions "
    "(IMAP.AccessAsUser.All, SMTP.Send, or for app-only IMAP.AccessAsApp plus FullAccess) and "
    "that IMAP/SMTP AUTH is enabled for the mailbox.",
    "timeout": "The server did not answer in time: check the network path and the timeout.",
    "connection": "Could not connect: check host, port, DNS and firewalls.",
    "tls": "TLS failed: check the server name and ca_file.",
    "protocol": "The server answered something unexpected: run "
    "`o365-mailbox-exporter check --log.level=debug` and read its log lines.",
    "folder_missing": "The folder does not exist: check `folders` in the config.",
    "dependency": "An earlier check failed; fix that one first.",
    "backoff": "Waiting before the next sign-in after a credential failure (Smart Lockout guard); "
    "changing the secret file or the config retries at once.",
    "unknown": "Unexpected failure: run `o365-mailbox-exporter doctor` to walk the sign-in "
    "step by step.",
}

_AADSTS_RE = re.compile(r"AADSTS(\d+)")
# Bearer tokens, refresh tokens, assertions, client secrets: long runs of base64 / base64url
# characters. Entra ID client secrets carry `~`, standard base64 carries `/` and `+`. URLs and
# absolute paths are read segment by segment (a long run inside one is still redacted), so that
# `https://login.microsoftonline.com/contoso/oauth2/v2.0/token` or a state file's path stays.
_LONG_RUN = r"[A-Za-z0-9_\-.+=~/]{40,}"
REDACTED = "<redacted>"
_SECRET_SEGMENT_RE = re.compile(r"[A-Za-z0-9_\-.+=~]{40,}")
_SCRUB_RE = re.compile(
    r"(?P<key>\b[a-z_][a-z0-9_]{0,31}=)(?=/)|"  # logfmt's `path=/var/lib/...`: the path stays
    r"(?P<path>(?:[A-Za-z][A-Za-z0-9+.\-]*:/)?/[A-Za-z0-9_\-.+=~/%:@?&#]*)|(?P<run>"
    + _LONG_RUN
    + ")"
)


def _scrub_match(match: re.Match[str]) -> str:
    if match.group("key") is not None:
        return match.group("key")
    path = match.group("path")
    if path is not None:  # in a URL or path only mixed-case runs with digits look like tokens
        return _SECRET_SEGMENT_RE.sub(_tokenish_segment, path)
    return REDACTED


def _tokenish_segment(match: re.Match[str]) -> str:
    run = match.group(0)
    mixed = any(c.isupper() for c in run) and any(c.islower() for c in run)
    return REDACTED if mixed and any(c.isdigit() for c in run) else run


def scrub(text: str) -> str:
    """Remove anything that looks like a token or a secret from text meant for logs, pages or
    metrics."""
    return _SCRUB_RE.sub(_scrub_match, text)


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a check failed: a fixed reason word, a bounded code, a safe message and a hint."""

    reason: str
    code: str = ""
    message: str = ""
    hint: str = ""
    retry_after: float | None = None  # seconds the server asked us to wait (HTTP Retry-After)

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"unknown failure reason {self.reason!r}")

    @property
    def remediation(self) -> str:
        return self.hint or hint_for(self.reason, self.code)


def hint_for(reason: str, code: str = "") -> str:
    if code.isdigit() and int(code) in AADSTS:
        return AADSTS[int(code)][1]
    return REASON_HINTS.get(reason, REASON_HINTS["unknown"])


_COMMAND_RE = re.compile(rf"`{PROGRAM} (?P<command>[a-z][a-z-]*)(?P<rest>[^`]*)`")
# Subcommands that read the config, and those that take --mailbox.
_CONFIG_COMMANDS = frozenset({"check", "login", "doctor", "junk-review", "oversized"})


def command_line(
    command: str,
    config_file: str | os.PathLike[str] | None,
    mailbox: str | None = None,
    rest: str = "",
) -> str:
    """`o365-mailbox-exporter COMMAND --config.file=F --mailbox NAME REST`, quoted for a POSIX
    shell. The config path is made absolute, so the line works from any directory."""
    words = [PROGRAM, command]
    if config_file is not None and command in _CONFIG_COMMANDS and "--config.file" not in rest:
        words.append("--config.file=" + shlex.quote(os.path.abspath(os.fspath(config_file))))
    if mailbox and command in _CONFIG_COMMANDS and "--mailbox" not in rest:
        words += ["--mailbox", shlex.quote(mailbox)]
    return " ".join(words) + rest


def pasteable(
    hint: str, config_file: str | os.PathLike[str] | None, mailbox: str | None = None
) -> str:
    """`hint` with every `o365-mailbox-exporter COMMAND ...` in it completed with the
    --config.file and --mailbox in use (see `command_line`). Idempotent."""
    if config_file is None and mailbox is None:
        return hint

    def complete(match: re.Match[str]) -> str:
        return f"`{command_line(match['command'], config_file, mailbox, match['rest'])}`"

    return _COMMAND_RE.sub(complete, hint)


def force_hint(command: str) -> str:
    """What a held-back sign-in's hint adds in `check`, `doctor` and `login`."""
    return (
        f"To try now anyway, run `{PROGRAM} {command} --force` (every wrong password counts "
        "toward Entra ID Smart Lockout)."
    )


class CheckFailed(Exception):
    """Raised inside a check; the runner turns it into a failed result."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message or failure.reason)
        self.failure = failure


def fail(reason: str, message: str, code: str = "", hint: str = "") -> CheckFailed:
    return CheckFailed(Failure(reason, code, scrub(message), hint))


def aadsts_code(error: dict[str, object]) -> int | None:
    """The AADSTS number of an MSAL error dict (error_codes first, then the description)."""
    codes = error.get("error_codes")
    if isinstance(codes, list) and codes and isinstance(codes[0], int):
        return codes[0]
    match = _AADSTS_RE.search(str(error.get("error_description", "")))
    return int(match.group(1)) if match else None


def classify_token_error(
    error: dict[str, object], http_status: int | None = None, retry_after: float | None = None
) -> Failure:
    """Turn an MSAL error dict into a Failure (reason, AADSTS code, first line, hint)."""
    code = aadsts_code(error)
    oauth_error = str(error.get("error", ""))
    suberror = str(error.get("suberror", ""))
    if code is not None and code in AADSTS:
        reason, hint = AADSTS[code]
    elif oauth_error in DEVICE_CODE_ERRORS:
        reason, hint = "interaction_required", DEVICE_CODE_ERRORS[oauth_error]
    elif http_status == 429:
        reason, hint = "throttled", REASON_HINTS["throttled"]
    elif suberror in _OAUTH_ERRORS:
        reason = _OAUTH_ERRORS[suberror]
        hint = REASON_HINTS[reason]
    else:
        reason = _OAUTH_ERRORS.get(oauth_error, "unknown")
        hint = REASON_HINTS[reason]
    if http_status == 429:
        reason = "throttled"
    description = str(error.get("error_description", oauth_error)).splitlines()
    message = cut(description[0] if description else oauth_error)
    # `code` is an AADSTS number or nothing: never an HTTP status (the message names that).
    code_label = str(code) if code is not None else ""
    if http_status is not None and http_status >= 400 and code is None:
        message = f"HTTP {http_status}: {message}"
    return Failure(reason, code_label, scrub(message), hint, retry_after)


MAX_MESSAGE_CHARS = 300  # of server text quoted in a failure message


def cut(text: str) -> str:
    """Server text quoted in a failure: at most MAX_MESSAGE_CHARS characters."""
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + "..."


def first_line(err: BaseException) -> str:
    """The first line of an exception's text, cut at MAX_MESSAGE_CHARS."""
    lines = str(err).splitlines()
    return cut(lines[0] if lines else type(err).__name__)


def classify_transport(err: BaseException, step: str) -> CheckFailed | None:
    """The failures every protocol shares (timeouts, TLS, DNS); None for the rest."""
    if isinstance(err, CheckFailed):
        return err
    if isinstance(err, (socket.timeout, TimeoutError)):
        return fail("timeout", f"{step}: no answer in time")
    if isinstance(err, ssl.SSLError):
        return fail("tls", f"{step}: TLS failed: {first_line(err)}")
    if isinstance(err, socket.gaierror):
        return fail("connection", f"{step}: cannot resolve host: {first_line(err)}")
    return None

"""`doctor --mailbox NAME`: walk the sign-in chain one step at a time and, at the first broken
step, say what is wrong and how to fix it in the words of the Entra ID / Exchange setup.

The steps, in order: the secret, authority discovery (the tenant's OIDC document), the token
(the configured flow), the token's claims (audience, scopes, user), IMAP TLS connect, the
server's capabilities, XOAUTH2 login, EXAMINE of the inbox, folder discovery (Junk, Sent),
and SMTP (STARTTLS + AUTH XOAUTH2, when `smtp_login` is enabled). Read-only like the checks:
EXAMINE, never SELECT; SMTP never sends.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import requests

from exporter.admin.common import EXIT_FAILED, EXIT_OK, write_json
from exporter.auth import MailboxAuth, Token, tls_context
from exporter.backoff import BackoffStore, secret_key
from exporter.config import Config, MailboxConfig, read_secret
from exporter.errors import ExporterError, SecretError
from exporter.failures import (
    CREDENTIAL_REASONS,
    CheckFailed,
    classify_token_error,
    first_line,
    force_hint,
    hint_for,
    pasteable,
    scrub,
)
from exporter.imap import JUNK, SENT, ImapSession
from exporter.smtp import SmtpSession
from exporter.tlsinfo import not_after_der

# Audiences Exchange Online accepts for IMAP/SMTP tokens (resource URLs and its app ID).
EXCHANGE_AUDIENCES = frozenset(
    {
        "https://outlook.office365.com",
        "https://outlook.office.com",
        "00000002-0000-0ff1-ce00-000000000000",
    }
)


class StepFailed(Exception):
    """A broken step: what is wrong, and the fix."""

    def __init__(self, problem: str, fix: str, reason: str = "", code: str = "") -> None:
        super().__init__(problem)
        self.problem = scrub(problem)
        self.fix = fix
        self.reason = reason
        self.code = code

    @classmethod
    def from_check(cls, err: CheckFailed, fix: str = "") -> StepFailed:
        f = err.failure
        return cls(f.message or f.reason, fix or f.remediation, f.reason, f.code)


@dataclass
class Walk:
    """What the steps hand on to each other."""

    mailbox: MailboxConfig
    state_dir: Path
    auth: MailboxAuth | None = None
    token: Token | None = None
    imap: ImapSession | None = None
    notes: list[str] = field(default_factory=list)
    force: bool = False  # --force: try a sign-in the credential backoff holds back


@dataclass(frozen=True, slots=True)
class StepResult:
    step: str
    status: str  # ok, fail, skipped, not_run
    detail: str = ""
    reason: str = ""
    code: str = ""
    fix: str = ""


Step = Callable[[Walk], str]


# -- the steps --------------------------------------------------------------------------------
def step_secret(walk: Walk) -> str:
    auth = walk.mailbox.auth
    source = (
        auth.password_file or auth.client_secret_file or auth.certificate_file
        or auth.password_env or auth.client_secret_env
    )  # fmt: skip
    if auth.flow == "device_code":
        return "device code flow: no secret; the refresh token comes from `login`"
    try:
        read_secret(auth)
    except SecretError as err:
        raise StepFailed(
            str(err),
            "Put the secret in the file (mode 0600, owned by the exporter's user) or the "
            "environment variable named in the config. For client_secret: the secret's Value "
            "from Certificates & secrets, not its Secret ID.",
        ) from err
    kind = {"client_secret": "client secret", "client_certificate": "certificate"}
    return f"{kind.get(auth.flow, 'password')} readable from {source}"


def step_authority(walk: Walk) -> str:
    mailbox = walk.mailbox
    try:
        walk.auth = MailboxAuth(mailbox, walk.state_dir)
    except (ExporterError, OSError) as err:
        raise StepFailed(
            f"cannot set up: {err}", "Check state_dir (writable) and ca_file (a PEM file)."
        ) from err
    url = f"{mailbox.authority}/v2.0/.well-known/openid-configuration"
    try:
        response = walk.auth.session.get(url)
    except requests.exceptions.SSLError as err:
        raise StepFailed(
            f"TLS to {mailbox.authority_host} failed: {_tls_reason(err)}",
            f"The certificate of {mailbox.authority_host} is not trusted. Behind a "
            "TLS-inspecting proxy set ca_file to the proxy's CA; otherwise check "
            "authority_host (https://login.microsoftonline.com).",
            "tls",
        ) from err
    except requests.exceptions.Timeout as err:
        raise StepFailed(
            f"{mailbox.authority_host} did not answer in time",
            "Check the network path (proxy, firewall: HTTPS to the authority) and timeout.",
            "timeout",
        ) from err
    except requests.exceptions.RequestException as err:
        raise StepFailed(
            f"cannot reach {mailbox.authority_host}: {scrub(first_line(err))}",
            "Check DNS, proxy and firewall for HTTPS to the authority, and authority_host.",
            "connection",
        ) from err
    try:
        document = response.json()
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise StepFailed(
            f"{url} answered HTTP {response.status_code} without an OIDC document",
            "authority_host does not look like an Entra ID authority: use "
            "https://login.microsoftonline.com (or your sovereign cloud's host).",
            "protocol",
        )
    if response.status_code != 200 or "token_endpoint" not in document:
        failure = classify_token_error(document, response.status_code)
        raise StepFailed(
            f"tenant {mailbox.tenant_id}: {failure.message}",
            failure.remediation
            if failure.code
            else "Check tenant_id (Entra ID > Overview > Tenant ID) and authority_host.",
            failure.reason,
            failure.code,
        )
    return f"{mailbox.authority}: token endpoint {document['token_endpoint']}"


_FLOW_WORDS = {
    "password": "password flow: refresh-token grant, else username + password (ROPC)",
    "device_code": "device code flow: refresh-token grant",
    "client_secret": "client credentials with a client secret",
    "client_certificate": "client credentials with a certificate",
}


def step_token(walk: Walk) -> str:
    """The sign-in, under the same credential backoff as the exporter (the Smart Lockout
    guard): a password flow that the record holds back is not tried without --force."""
    assert walk.auth is not None
    mailbox = walk.mailbox
    backoff = BackoffStore(walk.state_dir, mailbox.name)
    key = secret_key(mailbox)
    now = time.time()
    held = backoff.holds_back("token", now, key) if mailbox.auth.flow == "password" else None
    if held is not None and not walk.force:
        fix = f"{held.remediation} {force_hint('doctor')}"
        raise StepFailed(held.message, fix, "backoff", held.code)
    try:
        walk.token = walk.auth.refresh()
    except CheckFailed as err:
        if err.failure.reason in CREDENTIAL_REASONS or err.failure.retry_after:
            backoff.failed("token", err.failure, now, mailbox.interval, key)
        raise StepFailed.from_check(err) from err
    backoff.passed("token")
    return f"{_FLOW_WORDS[mailbox.auth.flow]}: token obtained"


def token_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT access token, unverified (only to explain it); None if opaque."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (binascii.Error, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


def step_claims(walk: Walk) -> str:
    assert walk.token is not None
    mailbox = walk.mailbox
    claims = token_claims(walk.token.access_token)
    if claims is None:
        return "opaque token: claims not checked"
    audience = str(claims.get("aud", "")).rstrip("/")
    if audience not in EXCHANGE_AUDIENCES:
        raise StepFailed(
            f"the token is for {audience or 'no audience'}, not Exchange Online: IMAP and SMTP "
            "will refuse it",
            "List the scopes with the Exchange resource URL: "
            "https://outlook.office365.com/IMAP.AccessAsUser.All and "
            "https://outlook.office365.com/SMTP.Send (app-only: "
            "https://outlook.office365.com/.default).",
            "auth_rejected",
        )
    smtp = "smtp_login" in mailbox.checks
    if mailbox.auth.app_only:
        roles = {str(r) for r in claims.get("roles", []) if isinstance(r, str)}
        wanted = ["IMAP.AccessAsApp"] + (["SMTP.SendAsApp"] if smtp else [])
        missing = [w for w in wanted if w not in roles]
        if missing:
            raise StepFailed(
                f"the token lacks the application permission(s) {', '.join(missing)} "
                f"(roles: {', '.join(sorted(roles)) or 'none'})",
                f"In the app registration add API permissions > Office 365 Exchange Online > "
                f"Application permissions > {', '.join(missing)}, then Grant admin consent.",
                "auth_rejected",
            )
        return f"audience {audience}, roles {', '.join(sorted(roles))}"
    scopes = str(claims.get("scp", "")).split()
    wanted = ["IMAP.AccessAsUser.All"] + (["SMTP.Send"] if smtp else [])
    missing = [w for w in wanted if w not in scopes]
    if missing:
        raise StepFailed(
            f"the token lacks the delegated permission(s) {', '.join(missing)} "
            f"(scp: {' '.join(scopes) or 'none'})",
            "Add the delegated permission(s) "
            + ", ".join(missing)
            + " (Office 365 Exchange Online), Grant admin consent for the tenant, and list "
            + " and ".join(f"https://outlook.office365.com/{m}" for m in missing)
            + " in scopes.",
            "auth_rejected",
        )
    user = str(claims.get("upn") or claims.get("unique_name") or claims.get("preferred_username"))
    if user and user != "None" and user.casefold() != mailbox.username.casefold():
        raise StepFailed(
            f"the token belongs to {user}, not to {mailbox.username}",
            f"Sign in as {mailbox.username}: run `o365-mailbox-exporter login` again (device "
            "code), or fix username / the password file.",
            "auth_rejected",
        )
    return f"audience {audience}, scopes {' '.join(scopes)}, user {user}"


def step_imap_connect(walk: Walk) -> str:
    mailbox = walk.mailbox
    endpoint = f"{mailbox.imap.host}:{mailbox.imap.port}"
    try:
        walk.imap = ImapSession.connect(
            mailbox.imap.host, mailbox.imap.port, tls_context(mailbox.ca_file), mailbox.timeout
        )
    except CheckFailed as err:
        reason = err.failure.reason
        fixes = {
            "tls": f"The certificate of {endpoint} is not trusted or does not name "
            f"{mailbox.imap.host}: use imap.host outlook.office365.com (port 993, implicit TLS); "
            "behind a TLS-inspecting proxy set ca_file to its CA.",
            "connection": f"Nothing accepts connections on {endpoint}: check imap.host and "
            "imap.port (outlook.office365.com:993), DNS and firewalls (outbound 993).",
            "timeout": f"{endpoint} does not answer: check firewalls (outbound 993) and timeout.",
        }
        raise StepFailed.from_check(err, fixes.get(reason, "")) from err
    certificate = walk.imap.peer_certificate()
    if certificate is None:
        return f"TLS to {endpoint}"
    expiry = datetime.fromtimestamp(not_after_der(certificate), UTC).strftime("%Y-%m-%d")
    return f"TLS to {endpoint}, server certificate valid until {expiry}"


def step_capabilities(walk: Walk) -> str:
    assert walk.imap is not None
    try:
        capabilities = walk.imap.capabilities()
    except CheckFailed as err:
        raise StepFailed.from_check(err) from err
    if "AUTH=XOAUTH2" not in capabilities:
        raise StepFailed(
            "the server does not offer AUTH=XOAUTH2 "
            f"(offers: {' '.join(sorted(c for c in capabilities if c.startswith('AUTH=')))})",
            "Point imap.host at Exchange Online (outlook.office365.com): it offers XOAUTH2.",
            "protocol",
        )
    interesting = [c for c in ("IMAP4REV1", "SASL-IR", "AUTH=XOAUTH2") if c in capabilities]
    return " ".join(interesting)


def step_login(walk: Walk) -> str:
    assert walk.imap is not None and walk.token is not None
    mailbox = walk.mailbox
    try:
        walk.imap.login(mailbox.username, walk.token.access_token)
    except CheckFailed as err:
        if mailbox.auth.app_only:
            fix = (
                "Exchange refused the app's token: register the app's service principal in "
                "Exchange (New-ServicePrincipal with the Enterprise application's Object ID), "
                f"give it FullAccess on {mailbox.username} (Add-MailboxPermission), and check "
                "IMAP.AccessAsApp with admin consent."
            )
        else:
            fix = (
                "Exchange refused the token: check the delegated permission "
                "IMAP.AccessAsUser.All with Grant admin consent, and that IMAP is enabled for "
                f"{mailbox.username} (Set-CASMailbox -ImapEnabled $true) and for the tenant."
            )
        raise StepFailed.from_check(err, fix) from err
    return f"AUTHENTICATE XOAUTH2 as {mailbox.username}"


def step_examine(walk: Walk) -> str:
    assert walk.imap is not None
    inbox = walk.mailbox.folders.inbox
    try:
        status = walk.imap.examine(inbox)
    except CheckFailed as err:
        fix = (
            f"There is no folder {inbox!r}: fix folders.inbox (Exchange's inbox is INBOX)."
            if err.failure.reason == "folder_missing"
            else ""
        )
        raise StepFailed.from_check(err, fix) from err
    return f"EXAMINE {inbox}: {status.messages} messages"


def step_folders(walk: Walk) -> str:
    assert walk.imap is not None
    folders = walk.mailbox.folders
    try:
        junk = walk.imap.find_folder(JUNK, folders.junk)
        sent = walk.imap.find_folder(SENT, folders.sent)
    except CheckFailed as err:
        raise StepFailed.from_check(err) from err
    if junk is None and "junk" in walk.mailbox.checks:
        raise StepFailed(
            f"no folder marked \\Junk and none named {folders.junk!r}",
            "Set folders.junk to the Junk folder's name in the mailbox's language.",
            "folder_missing",
        )
    return f"Junk: {junk or 'none'}; Sent: {sent or 'none'}"


def step_smtp(walk: Walk) -> str:
    assert walk.token is not None
    mailbox = walk.mailbox
    if "smtp_login" not in mailbox.checks:
        raise _Skip("smtp_login is not enabled")
    session = SmtpSession(
        mailbox.smtp.host, mailbox.smtp.port, tls_context(mailbox.ca_file), mailbox.timeout
    )
    try:
        session.starttls()
        session.login(mailbox.username, walk.token.access_token)
    except CheckFailed as err:
        endpoint = f"{mailbox.smtp.host}:{mailbox.smtp.port}"
        fixes = {
            "tls": f"The certificate of {endpoint} is not trusted or does not name "
            f"{mailbox.smtp.host}: use smtp.host smtp.office365.com (port 587, STARTTLS); "
            "behind a TLS-inspecting proxy set ca_file to its CA.",
            "connection": f"Nothing accepts connections on {endpoint}: check smtp.host and "
            "smtp.port (smtp.office365.com:587), DNS and firewalls (outbound 587).",
            "timeout": f"{endpoint} does not answer: check firewalls (outbound 587) and timeout.",
        }
        raise StepFailed.from_check(err, fixes.get(err.failure.reason, "")) from err
    finally:
        session.quit()
    return f"STARTTLS and AUTH XOAUTH2 on {mailbox.smtp.host}:{mailbox.smtp.port}"


class _Skip(Exception):
    """The step does not apply to this mailbox."""


def steps_for(mailbox: MailboxConfig) -> list[tuple[str, Step]]:
    return [
        ("secret", step_secret),
        ("authority discovery", step_authority),
        (f"token ({mailbox.auth.flow})", step_token),
        ("token claims", step_claims),
        ("IMAP TLS connect", step_imap_connect),
        ("IMAP capabilities", step_capabilities),
        ("XOAUTH2 login", step_login),
        ("EXAMINE inbox", step_examine),
        ("folder discovery", step_folders),
        ("SMTP", step_smtp),
    ]


def diagnose(mailbox: MailboxConfig, state_dir: Path, force: bool = False) -> list[StepResult]:
    """Run the steps until the first broken one; the rest are `not_run`."""
    walk = Walk(mailbox, state_dir, force=force)
    results: list[StepResult] = []
    broken = False
    try:
        for name, step in steps_for(mailbox):
            if broken:
                results.append(StepResult(name, "not_run"))
                continue
            try:
                results.append(StepResult(name, "ok", step(walk)))
            except _Skip as skip:
                results.append(StepResult(name, "skipped", str(skip)))
            except StepFailed as err:
                broken = True
                fix = err.fix or hint_for(err.reason or "unknown", err.code)
                results.append(StepResult(name, "fail", err.problem, err.reason, err.code, fix))
    finally:
        if walk.imap is not None:
            walk.imap.logout()
    return results


def run(
    config: Config, mailbox: MailboxConfig, output: str, stdout: TextIO, force: bool = False
) -> int:
    results = [
        replace(r, fix=pasteable(r.fix, config.path, mailbox.name))
        for r in diagnose(mailbox, config.state_dir, force)
    ]
    ok = all(r.status != "fail" for r in results)
    broken = next((r for r in results if r.status == "fail"), None)
    if output == "json":
        write_json(
            {
                "mailbox": mailbox.name,
                "ok": ok,
                "broken_step": broken.step if broken else None,
                "steps": [
                    {
                        "step": r.step,
                        "status": r.status,
                        "detail": r.detail or None,
                        "reason": r.reason or None,
                        "code": r.code or None,
                        "fix": r.fix or None,
                    }
                    for r in results
                ],
            },
            stdout,
        )
    else:
        stdout.write(report_text(mailbox, results, broken) + "\n")
    return EXIT_OK if ok else EXIT_FAILED


_MARK = {"ok": "ok", "fail": "FAIL", "skipped": "skip", "not_run": "-"}


def report_text(
    mailbox: MailboxConfig, results: list[StepResult], broken: StepResult | None
) -> str:
    width = max(len(r.step) for r in results)
    lines = [f"doctor: mailbox {mailbox.name} ({mailbox.username}, flow {mailbox.auth.flow})", ""]
    for r in results:
        detail = r.detail if r.status != "not_run" else "not run"
        lines.append(f"  {_MARK[r.status]:<4}  {r.step:<{width}}  {detail}".rstrip())
    lines.append("")
    if broken is None:
        lines.append("Every step works.")
    else:
        code = f" {broken.code}" if broken.code else ""
        reason = f" ({broken.reason}{code})" if broken.reason else ""
        lines.append(f"Broken step: {broken.step}{reason}")
        lines.append(f"What is wrong: {broken.detail}")
        lines.append(f"Fix: {broken.fix}")
    return "\n".join(lines)


def _tls_reason(err: BaseException) -> str:
    """The verification failure inside requests' long chain of wrapped exceptions."""
    match = re.search(r"certificate verify failed: ([^(]+?)\s*\(", str(err))
    return f"certificate verify failed: {match.group(1)}" if match else scrub(first_line(err))

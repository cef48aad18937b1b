"""SMTP AUTH XOAUTH2 sign-in over STARTTLS; never sends a message (EHLO, STARTTLS, AUTH, QUIT).

Knows nothing of metrics. Failures are `CheckFailed` with the contract's reason word and the
enhanced status code (`5.7.3`, `5.7.139`) as `code`, since it tells the causes apart; the
plain reply code (`535`) when the server sends no enhanced code.
"""

from __future__ import annotations

import contextlib
import re
import smtplib
import socket
import ssl

from exporter.auth import resolve
from exporter.failures import CheckFailed, classify_transport, fail

_ENHANCED_RE = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")

SMTP_HINTS = {
    "5.7.139": "SMTP AUTH is disabled for the mailbox (or the tenant): enable Authenticated SMTP "
    "(Set-CASMailbox -SmtpClientAuthenticationDisabled $false) or the tenant setting.",
    "5.7.3": "The server refused the token: check the SMTP.Send permission (SMTP.SendAsApp for "
    "app-only), admin consent and that the token's user is the mailbox.",
}


def _code(reply_code: int, reply: bytes | str) -> str:
    match = _ENHANCED_RE.search(_text(reply))
    return match.group(1) if match else str(reply_code)


def _text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return " ".join(text.split())[:200]


class _SMTP(smtplib.SMTP):
    """smtplib.SMTP whose DNS lookup runs under the timeout too (`resolve`); the host name
    stays the one STARTTLS verifies."""

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        error: OSError | None = None
        for address in resolve(host, port, timeout):
            try:
                return socket.create_connection(address, timeout, self.source_address)
            except OSError as err:
                error = err
        raise error or OSError(f"no address for {host}")


class SmtpSession:
    """One SMTP submission connection. `abort()` may be called from another thread."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, timeout: float) -> None:
        self.host = host
        self.port = port
        self.context = context
        self.timeout = timeout
        self._smtp: smtplib.SMTP | None = None

    def abort(self) -> None:
        sock = self._smtp.sock if self._smtp is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def starttls(self) -> bytes | None:
        """Connect, EHLO, STARTTLS, EHLO. Returns the server certificate (DER)."""
        try:
            # The host given to the constructor is also STARTTLS's server_hostname.
            smtp = self._smtp = _SMTP(self.host, self.port, timeout=self.timeout)
            smtp.ehlo()
            if not smtp.has_extn("starttls"):
                raise fail("protocol", "the server does not offer STARTTLS", code="")
            smtp.starttls(context=self.context)
            smtp.ehlo()
        except smtplib.SMTPNotSupportedError as err:
            raise fail("protocol", f"STARTTLS: {err}") from err
        except Exception as err:
            raise classify(err, "STARTTLS") from err
        sock = smtp.sock
        return sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None

    def _session(self) -> smtplib.SMTP:
        assert self._smtp is not None, "starttls() runs first"
        return self._smtp

    def login(self, username: str, access_token: str) -> None:
        """AUTH XOAUTH2 without an initial response: Exchange takes either form, Dovecot's
        submission refuses an AUTH line as long as a real token ("Line too long")."""
        auth_string = f"user={username}\x01auth=Bearer {access_token}\x01\x01"
        answered: list[bytes | None] = []

        def respond(challenge: bytes | None = None) -> str:
            answered.append(challenge)
            return auth_string if len(answered) == 1 else ""  # "" acknowledges an error JSON

        smtp = self._session()
        if "XOAUTH2" not in smtp.esmtp_features.get("auth", "").upper().split():
            raise fail(
                "auth_rejected",
                "the server does not offer AUTH XOAUTH2 after STARTTLS",
                code="",
                hint=SMTP_HINTS["5.7.139"],
            )
        try:
            smtp.auth("XOAUTH2", respond, initial_response_ok=False)
        except smtplib.SMTPAuthenticationError as err:
            code = _code(err.smtp_code, err.smtp_error)
            raise fail(
                "auth_rejected",
                f"AUTH XOAUTH2: {err.smtp_code} {_text(err.smtp_error)}",
                code=code,
                hint=SMTP_HINTS.get(code, ""),
            ) from err
        except Exception as err:
            raise classify(err, "AUTH XOAUTH2") from err

    def quit(self) -> None:
        if self._smtp is None:
            return
        try:
            self._smtp.quit()
        except Exception:  # noqa: BLE001 - the session is over either way
            self._smtp.close()


def classify(err: BaseException, step: str) -> CheckFailed:
    shared = classify_transport(err, step)
    if shared is not None:
        return shared
    if isinstance(err, smtplib.SMTPConnectError):
        code = _code(err.smtp_code, err.smtp_error)
        return fail("protocol", f"{step}: greeting {err.smtp_code} {_text(err.smtp_error)}", code)
    if isinstance(err, smtplib.SMTPServerDisconnected):
        return fail("connection", f"{step}: the server closed the connection")
    if isinstance(err, smtplib.SMTPResponseException):
        code = _code(err.smtp_code, err.smtp_error)
        return fail("protocol", f"{step}: {err.smtp_code} {_text(err.smtp_error)}", code=code)
    if isinstance(err, OSError):
        return fail("connection", f"{step}: {err}")
    return fail("unknown", f"{step}: {type(err).__name__}: {err}")

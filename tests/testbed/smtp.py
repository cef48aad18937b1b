"""SMTP peers for the `smtp_login` check.

* Dovecot's own submission service (`Dovecot(..., submission=True)`) is the real peer: it
  validates XOAUTH2 through the same `oauth2` passdb as IMAP and relays to an `SmtpSink`.
* `ExchangeLikeSmtp` (aiosmtpd) answers exactly as Exchange Online does where Dovecot cannot be
  made to: AUTH only after STARTTLS, `535 5.7.3 Authentication unsuccessful` for a refused
  token, and `535 5.7.139 ... SmtpClientAuthentication is disabled for the Mailbox` when SMTP
  AUTH is off for the mailbox (Dovecot answers every refusal with `535 5.7.8`).

Both count what they receive, so tests can prove that the exporter never sends a message.
"""

from __future__ import annotations

import base64
import socket
import ssl
import threading
from typing import Any

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from .entra import FakeEntra


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class _Recorder:
    """aiosmtpd handler that keeps every message it is handed (it never relays)."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.lock:
            content = envelope.content or b""
            self.messages.append(content.encode() if isinstance(content, str) else content)
        return "250 2.0.0 OK"


class SmtpSink:
    """A plain SMTP sink on loopback: Dovecot submission's relay host."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = _free_port(host)
        self.handler = _Recorder()
        self._controller = Controller(self.handler, hostname=host, port=self.port)

    @property
    def messages(self) -> list[bytes]:
        with self.handler.lock:
            return list(self.handler.messages)

    def start(self) -> SmtpSink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()


class _ExchangeHandler(_Recorder):
    def __init__(self, entra: FakeEntra) -> None:
        super().__init__()
        self.entra = entra
        self.smtp_auth_disabled: set[str] = set()  # lower-case UPNs
        self.login_attempts = 0

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        with self.lock:
            self.login_attempts += 1
        if len(args) > 1:
            blob: Any = base64.b64decode(args[1])
        else:
            blob = await server.challenge_auth("")
            if not isinstance(blob, bytes):
                return AuthResult(success=False, handled=True)
        fields = dict(
            part.split("=", 1)
            for part in blob.decode("utf-8", "replace").split("\x01")
            if "=" in part
        )
        user = fields.get("user", "")
        token = fields.get("auth", "").removeprefix("Bearer ")
        answer = self.entra.introspect(token)
        if user.lower() in self.smtp_auth_disabled:
            return AuthResult(
                success=False,
                handled=False,
                message="535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is "
                "disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled for more "
                "information.",
            )
        if not answer.get("active") or str(answer.get("username", "")).lower() != user.lower():
            return AuthResult(
                success=False,
                handled=False,
                message="535 5.7.3 Authentication unsuccessful [Example.PROD.OUTLOOK.COM]",
            )
        return AuthResult(success=True, auth_data=user)


class _LongLineSMTP(SMTP):
    # RFC 4954 allows AUTH lines of 12288 octets; real tokens are 1-3 kB (aiosmtpd: 1001).
    line_length_limit = 12288


class _ExchangeController(Controller):
    def factory(self) -> SMTP:
        return _LongLineSMTP(self.handler, **self.SMTP_kwargs)


class ExchangeLikeSmtp:
    """STARTTLS-only SMTP submission that answers like smtp.office365.com:587."""

    def __init__(self, ca: trustme.CA, entra: FakeEntra, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = _free_port(host)
        self.handler = _ExchangeHandler(entra)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(host).configure_cert(context)
        self._controller = _ExchangeController(
            self.handler,
            hostname=host,
            port=self.port,
            tls_context=context,
            require_starttls=True,
            auth_require_tls=True,
            auth_exclude_mechanism=["LOGIN", "PLAIN"],
            server_hostname="BN0PR01CA0000.outlook.office365.com",
        )

    def disable_smtp_auth(self, upn: str, disabled: bool = True) -> None:
        with self.handler.lock:
            if disabled:
                self.handler.smtp_auth_disabled.add(upn.lower())
            else:
                self.handler.smtp_auth_disabled.discard(upn.lower())

    @property
    def messages(self) -> list[bytes]:
        with self.handler.lock:
            return list(self.handler.messages)

    def start(self) -> ExchangeLikeSmtp:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

"""Reusable test bed: a fake Entra ID, a private Dovecot and message builders."""

from .dovecot import EXCHANGE_FOLDERS, Dovecot, DovecotStartError, MessageInfo
from .entra import (
    AADSTS_ERRORS,
    EXCHANGE_RESOURCE,
    GRANT_CLIENT_CREDENTIALS,
    GRANT_DEVICE_CODE,
    GRANT_PASSWORD,
    GRANT_REFRESH_TOKEN,
    GRAPH_RESOURCE,
    AadError,
    AppCertificate,
    EntraUnavailableError,
    ErrorRule,
    FakeEntra,
    LoggedRequest,
    make_app_certificate,
    start_fake_entra,
)
from .mail import (
    MAILDIR_FLAGS,
    address_value,
    header_value,
    maildir_info,
    make_message,
    virtual_size,
)
from .smtp import ExchangeLikeSmtp, SmtpSink

__all__ = [
    "AADSTS_ERRORS",
    "EXCHANGE_FOLDERS",
    "EXCHANGE_RESOURCE",
    "GRANT_CLIENT_CREDENTIALS",
    "GRANT_DEVICE_CODE",
    "GRANT_PASSWORD",
    "GRANT_REFRESH_TOKEN",
    "GRAPH_RESOURCE",
    "MAILDIR_FLAGS",
    "AadError",
    "AppCertificate",
    "Dovecot",
    "DovecotStartError",
    "EntraUnavailableError",
    "ErrorRule",
    "ExchangeLikeSmtp",
    "FakeEntra",
    "LoggedRequest",
    "MessageInfo",
    "SmtpSink",
    "address_value",
    "header_value",
    "maildir_info",
    "make_app_certificate",
    "make_message",
    "start_fake_entra",
    "virtual_size",
]

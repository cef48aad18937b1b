"""Certificate dates, read with `cryptography` (already a dependency of msal)."""

from __future__ import annotations

from cryptography import x509


def not_after_der(der: bytes) -> float:
    """notAfter of a DER certificate (as a TLS handshake gives it), as unix time."""
    return x509.load_der_x509_certificate(der).not_valid_after_utc.timestamp()


def first_certificate_pem(pem: str) -> str:
    """The first CERTIFICATE block of a PEM text. Raises ValueError when there is none."""
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    start = pem.index(begin)
    return pem[start : pem.index(end, start) + len(end)]


def not_after_pem(pem: str) -> float:
    certificate = x509.load_pem_x509_certificate(first_certificate_pem(pem).encode())
    return certificate.not_valid_after_utc.timestamp()

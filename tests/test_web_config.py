"""`--web.config.file`: TLS, client certificates and bcrypt basic auth, with real TLS clients."""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import bcrypt
import pytest
import requests
import trustme
import yaml

from exporter.errors import ConfigError
from exporter.webconfig import load_web_config
from tests.conftest import ROOT, free_port, write_config


@pytest.fixture
def served(make_mailbox, entra, dovecot, tmp_path: Path):
    """The exporter behind TLS + client certificates + basic auth."""
    server_ca, client_ca = trustme.CA(), trustme.CA()
    server_cert = server_ca.issue_cert("127.0.0.1")
    server_cert.cert_chain_pems[0].write_to_path(str(tmp_path / "server.crt"))
    server_cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    client_ca.cert_pem.write_to_path(str(tmp_path / "clients-ca.crt"))
    server_ca.cert_pem.write_to_path(str(tmp_path / "server-ca.crt"))
    client = client_ca.issue_cert("prometheus.example")
    client.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "client.pem"))
    stranger = trustme.CA().issue_cert("stranger.example")
    stranger.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "stranger.pem"))
    hashed = bcrypt.hashpw(b"scrape-pw", bcrypt.gensalt(rounds=6)).decode()
    web = {
        "tls_server_config": {
            "cert_file": "server.crt", "key_file": "server.key",
            "client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": "clients-ca.crt",
        },
        "basic_auth_users": {"prometheus": hashed.replace("$2b$", "$2y$", 1)},
    }
    (tmp_path / "web.yml").write_text(yaml.safe_dump(web))
    config = write_config(tmp_path, entra, dovecot, [make_mailbox("box")])
    port = free_port()
    log = (tmp_path / "exporter.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", f"--config.file={config}",
         f"--web.listen-address=127.0.0.1:{port}", f"--web.config.file={tmp_path / 'web.yml'}"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"https://127.0.0.1:{port}"
    session = requests.Session()
    session.trust_env = False
    session.verify = str(tmp_path / "server-ca.crt")
    session.cert = str(tmp_path / "client.pem")
    for _ in range(100):
        try:
            session.get(url + "/-/healthy", timeout=1)
            break
        except requests.RequestException:
            time.sleep(0.05)
    yield url, session, tmp_path
    proc.terminate()
    proc.wait(10)
    log.close()


def test_right_password_and_client_certificate(served):
    url, session, _ = served
    response = session.get(url + "/metrics", auth=("prometheus", "scrape-pw"), timeout=5)
    assert response.status_code == 200
    assert "o365_mailbox_exporter_build_info" in response.text
    again = session.get(url + "/-/healthy", auth=("prometheus", "scrape-pw"), timeout=5)
    assert again.status_code == 200


def test_wrong_or_missing_password_is_401(served):
    url, session, _ = served
    assert session.get(url + "/metrics", auth=("prometheus", "nope"), timeout=5).status_code == 401
    response = session.get(url + "/metrics", timeout=5)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert session.get(url + "/", auth=("someone", "scrape-pw"), timeout=5).status_code == 401


def test_no_or_foreign_client_certificate_is_refused(served):
    url, session, tmp_path = served
    context = ssl.create_default_context(cafile=str(tmp_path / "server-ca.crt"))
    request = urllib.request.Request(url + "/metrics", headers={
        "Authorization": "Basic " + b64encode(b"prometheus:scrape-pw").decode()})
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        urllib.request.urlopen(request, context=context, timeout=5)  # no client certificate
    stranger = requests.Session()
    stranger.trust_env = False
    stranger.verify = session.verify
    stranger.cert = str(tmp_path / "stranger.pem")
    with pytest.raises(requests.exceptions.RequestException):
        stranger.get(url + "/metrics", auth=("prometheus", "scrape-pw"), timeout=5)
    # The server is still fine for a proper client.
    assert session.get(url + "/metrics", auth=("prometheus", "scrape-pw"),
                       timeout=5).status_code == 200


def test_plain_http_to_the_tls_port_does_not_hang_the_server(served):
    url, session, _ = served
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(url.replace("https", "http") + "/metrics", timeout=3)
    assert session.get(url + "/metrics", auth=("prometheus", "scrape-pw"),
                       timeout=5).status_code == 200


def test_invalid_web_config_lists_every_problem(tmp_path):
    path = tmp_path / "web.yml"
    path.write_text(
        "tls_server_config:\n"                                   # 1
        "  cert_file: missing.crt\n"                             # 2
        "  key_file: missing.key\n"                              # 3
        "  client_auth_type: RequireAnyClientCert\n"             # 4
        "  curve_preferences: [X25519]\n"                        # 5
        "  cipher_suites: [TLS_AES_128_GCM_SHA256, TLS_RSA_WITH_RC4_128_SHA]\n"  # 6
        "  prefer_server_cipher_suites: sometimes\n"             # 7
        "basic_auth_users:\n"                                    # 8
        "  alice: plaintext\n"                                   # 9
        "http_server_config:\n"                                  # 10
        "  http2: true\n"                                        # 11
        "  headers:\n"                                           # 12
        "    X-Powered-By: me\n"                                 # 13
        "tls_config: {}\n"                                       # 14
    )
    with pytest.raises(ConfigError) as caught:
        load_web_config(path)
    suites = "TLS_AES_128_GCM_SHA256: TLS 1.3 suites cannot be configured (as in Go)"
    assert caught.value.problems[:8] == [
        f"{path}:14: tls_config: unknown key",
        f"{path}:9: basic_auth_users.alice: must be a bcrypt hash ($2y$...)",
        f"{path}:11: http_server_config.http2: HTTP/2 is not served (HTTP/1.1 only; Prometheus "
        "scrapes over HTTP/1.1): set it to false or remove it",
        f"{path}:13: http_server_config.headers.X-Powered-By: not one of the headers that may be "
        "set: Content-Security-Policy, Strict-Transport-Security, X-Content-Type-Options, "
        "X-Frame-Options, X-XSS-Protection",
        f"{path}:2: tls_server_config.cert_file: {tmp_path}/missing.crt: no such file",
        f"{path}:3: tls_server_config.key_file: {tmp_path}/missing.key: no such file",
        f"{path}:4: tls_server_config.client_auth_type: must be one of NoClientCert, "
        "VerifyClientCertIfGiven, RequireAndVerifyClientCert (RequestClientCert and "
        "RequireAnyClientCert cannot be honoured by Python's TLS)",
        f"{path}:6: tls_server_config.cipher_suites: {suites}",
    ]
    rest = caught.value.problems[8:]
    assert rest[0].startswith(f"{path}:6: tls_server_config.cipher_suites: "
                              "TLS_RSA_WITH_RC4_128_SHA: not a supported cipher suite (one of: ")
    assert rest[1:] == [
        f"{path}:7: tls_server_config.prefer_server_cipher_suites: must be true or false",
        f"{path}:5: tls_server_config.curve_preferences: cannot be honoured: Python's ssl module "
        "cannot choose the key-exchange groups; remove it (OpenSSL's defaults apply: X25519, "
        "P-256, P-384, P-521)",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("basic_auth_users: [alice]\n",
         "web.yml:1: basic_auth_users: must be a mapping of user names to bcrypt hashes"),
        ("tls_server_config:\n  cert_file: 5\n  key_file: k\n",
         "web.yml:2: tls_server_config.cert_file: must be a file name"),
        ("http_server_config: yes\n", "web.yml:1: http_server_config: must be a mapping"),
        ("tls_server_config: [a]\n", "web.yml:1: tls_server_config: must be a mapping"),
        ("basic_auth_users:\n  a: b\n c\n", "web.yml:3: yaml: "),
    ],
)
def test_malformed_values_get_file_line_errors(tmp_path, text, expected):
    path = tmp_path / "web.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_web_config(path)
    assert caught.value.problems[0].startswith(f"{tmp_path}/{expected}")


def _pair(ca: trustme.CA, directory: Path, name: str = "server") -> None:
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(directory / f"{name}.crt"))
    cert.private_key_pem.write_to_path(str(directory / f"{name}.key"))


def _handshake(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> str:
    """A real TLS handshake over loopback; returns the negotiated cipher (or raises)."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    errors: list[BaseException] = []

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_context.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError) as err:
            errors.append(err)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                client_context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            cipher = tls.cipher()[0]
            tls.sendall(b"x")
    finally:
        thread.join(5)
        listener.close()
    return cipher


def test_cipher_suites_and_server_preference_are_implemented(tmp_path):
    ca = trustme.CA()
    _pair(ca, tmp_path)
    (tmp_path / "web.yml").write_text(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        "  max_version: TLS12\n  prefer_server_cipher_suites: true\n"
        "  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, "
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305]\n"
    )
    web = load_web_config(tmp_path / "web.yml")
    assert web.tls is not None
    assert web.tls.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    client = ssl.create_default_context()
    ca.configure_trust(client)
    # The client prefers CHACHA20; the server's order wins.
    client.set_ciphers("ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384")
    assert _handshake(web.tls, client) == "ECDHE-ECDSA-AES256-GCM-SHA384"
    only_aes128 = ssl.create_default_context()
    ca.configure_trust(only_aes128)
    only_aes128.maximum_version = ssl.TLSVersion.TLSv1_2
    only_aes128.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    with pytest.raises(ssl.SSLError):
        _handshake(web.tls, only_aes128)


def test_headers_and_a_certificate_renewed_in_place(make_mailbox, entra, dovecot, tmp_path):
    ca = trustme.CA()
    _pair(ca, tmp_path)
    (tmp_path / "web.yml").write_text(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        "http_server_config:\n  headers:\n    X-Frame-Options: deny\n"
        "    Strict-Transport-Security: max-age=31536000\n"
    )
    config = write_config(tmp_path, entra, dovecot, [make_mailbox("box")])
    port = free_port()
    log = (tmp_path / "exporter.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", f"--config.file={config}",
         f"--web.listen-address=127.0.0.1:{port}", f"--web.config.file={tmp_path / 'web.yml'}"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )
    client = ssl.create_default_context()
    ca.configure_trust(client)

    def serial() -> int:
        import socket

        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                client.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            der = tls.getpeercert(binary_form=True)
        from cryptography import x509

        return x509.load_der_x509_certificate(der).serial_number

    try:
        for _ in range(100):
            try:
                response = urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics",
                                                  context=client, timeout=5)
                break
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        assert response.headers["X-Frame-Options"] == "deny"
        assert response.headers["Strict-Transport-Security"] == "max-age=31536000"
        first = serial()
        _pair(ca, tmp_path)  # cert-manager rewrites both files in place
        renewed_at = time.monotonic()
        while serial() == first:
            assert time.monotonic() - renewed_at < 12, "renewed certificate not picked up"
            time.sleep(0.2)
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()

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
    path.write_text(yaml.safe_dump({
        "tls_server_config": {"cert_file": "missing.crt", "key_file": "missing.key",
                              "client_auth_type": "RequireAnyClientCert"},
        "basic_auth_users": {"alice": "plaintext"},
        "tls_config": {},
    }))
    with pytest.raises(ConfigError) as caught:
        load_web_config(path)
    assert caught.value.problems == [
        f"{path}: tls_config: unknown key",
        f"{path}: basic_auth_users.alice: must be a bcrypt hash ($2y$...)",
        f"{path}: tls_server_config.cert_file: {tmp_path}/missing.crt: no such file",
        f"{path}: tls_server_config.key_file: {tmp_path}/missing.key: no such file",
        f"{path}: tls_server_config.client_auth_type: must be one of NoClientCert, "
        "VerifyClientCertIfGiven, RequireAndVerifyClientCert (RequestClientCert and "
        "RequireAnyClientCert cannot be honoured by Python's TLS)",
    ]

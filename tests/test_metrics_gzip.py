"""/metrics is gzipped when the client accepts it (Prometheus sends `Accept-Encoding: gzip`),
plain otherwise; both carry the same exposition text."""

from __future__ import annotations

import gzip
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.collector import CONTENT_TYPE
from exporter.config import Config
from exporter.service import Service
from exporter.web import ExporterApp, HttpServer, accepts_gzip, make_http_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[HttpServer]:
    service = Service(tmp_path / "config.yml")
    service.start(Config(path=tmp_path / "config.yml", state_dir=tmp_path / "state", mailboxes=()))
    http = make_http_server("127.0.0.1:0", ExporterApp(service))
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        yield http
    finally:
        http.shutdown()
        thread.join(5)
        http.server_close()
        service.stop()


def _get(server: HttpServer, headers: dict[str, str]) -> tuple[dict[str, str], bytes]:
    port = server.server_address[1]
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:  # urllib never decompresses
        return {k.lower(): v for k, v in response.headers.items()}, response.read()


def test_gzip_when_asked_plain_otherwise(server: HttpServer) -> None:
    headers, packed = _get(server, {"Accept-Encoding": "gzip"})
    assert headers["content-encoding"] == "gzip"
    assert headers["content-type"] == CONTENT_TYPE
    assert headers["vary"] == "Accept-Encoding"
    assert int(headers["content-length"]) == len(packed)
    text = gzip.decompress(packed).decode()
    assert "o365_mailbox_exporter_build_info{" in text
    assert text.endswith("\n")

    headers, plain = _get(server, {})
    assert "content-encoding" not in headers
    assert headers["content-type"] == CONTENT_TYPE
    assert plain.decode().startswith("# HELP ")
    assert "o365_mailbox_exporter_build_info{" in plain.decode()
    # The same metrics either way (the reload timestamp and build info do not move).
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}
    assert names == {
        line.split("{")[0].split(" ")[0] for line in plain.decode().splitlines() if line[:1] != "#"
    }


def test_prometheus_accept_encoding_header(server: HttpServer) -> None:
    """What Prometheus 2.x/3.x sends; `q=0` and other codings get plain text."""
    headers, _body = _get(server, {"Accept-Encoding": "gzip"})
    assert headers.get("content-encoding") == "gzip"
    headers, _body = _get(server, {"Accept-Encoding": "gzip;q=0, identity"})
    assert "content-encoding" not in headers
    headers, _body = _get(server, {"Accept-Encoding": "br, deflate"})
    assert "content-encoding" not in headers


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("gzip", True),
        ("gzip, deflate, br", True),
        ("deflate, gzip;q=0.5", True),
        ("x-gzip", True),
        ("*", True),
        ("", False),
        ("identity", False),
        ("gzip;q=0", False),
        ("gzip;q=0, *", False),
        ("*;q=0", False),
    ],
)
def test_accepts_gzip(header: str, expected: bool) -> None:
    assert accepts_gzip(header) is expected

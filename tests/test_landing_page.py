"""The landing page refreshes itself and says why the last reload failed (a real exporter
process, a config file broken and fixed again)."""

from __future__ import annotations

import html

from tests.conftest import write_config


def test_landing_page_refreshes_and_shows_why_a_reload_failed(
    make_mailbox, entra, dovecot, tmp_path, exporter_process
):
    box = make_mailbox("box")
    config = write_config(tmp_path, entra, dovecot, [box], interval="2s")
    exporter = exporter_process(config)
    exporter.wait_for("o365_mailbox_up", 1.0, mailbox="box")

    _status, page = exporter.get("/")
    assert '<meta http-equiv="refresh" content="5">' in page  # the 2s interval, at least 5s
    assert "Config reload failed" not in page

    good = config.read_text()
    config.write_text(
        good.replace("flow: password", "flow: pasword").replace("interval: 2s", "interval: <2s>")
    )
    status, _body = exporter.post("/-/reload")
    assert status == 500

    _status, page = exporter.get("/")
    assert "config reload: FAILED (old config kept)" in page
    section = page.split('<section class="reload-failed">', 1)[1].split("</section>", 1)[0]
    problems = [
        f"{config}:3: defaults.interval: '<2s>' is not a duration (use 30s, 5m, 1h)",
        f"{config}:16: mailboxes[0].auth.flow: must be one of password, device_code, "
        "client_secret, client_certificate",
    ]
    assert "".join(f"<li><code>{html.escape(p)}</code></li>" for p in problems) in section
    assert "&#x27;&lt;2s&gt;&#x27; is not a duration" in section  # escaped
    assert (
        f"Check a fix with <code>o365-mailbox-exporter --config.check --config.file={config}</code>"
    ) in section
    assert "<td>box</td><td>token</td><td>ok</td>" in page  # the old config keeps running

    config.write_text(good)
    assert exporter.post("/-/reload")[0] == 200
    _status, page = exporter.get("/")
    assert "config reload: ok" in page
    assert "reload-failed" not in page.split("</style>", 1)[1]


def test_landing_page_refresh_is_at_most_30s(
    make_mailbox, entra, dovecot, tmp_path, exporter_process
):
    config = write_config(tmp_path, entra, dovecot, [make_mailbox("slow")], interval="5m")
    exporter = exporter_process(config)

    _status, page = exporter.get("/")

    assert '<meta http-equiv="refresh" content="30">' in page
    assert "this page refreshes every 30s" in page

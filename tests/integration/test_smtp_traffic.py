"""The smtp analyzer on real traffic: Python's smtplib against an aiosmtpd server on 127.0.0.1.

The server runs in this process (aiosmtpd's Controller thread) with AUTH (PLAIN, LOGIN) allowed
in clear and STARTTLS with a self-signed certificate made by ``openssl req``; tcpdump captures the
loopback. Needs aiosmtpd (the ``test`` extra), tcpdump and openssl.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import smtplib
import ssl
import subprocess
from collections.abc import Callable, Iterator
from email.generator import BytesGenerator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from analyzers import transactions
from sniff import free_port, sniffing

controller_module = pytest.importorskip("aiosmtpd.controller", reason="needs aiosmtpd (pip install aiosmtpd)")
smtp_module = pytest.importorskip("aiosmtpd.smtp", reason="needs aiosmtpd (pip install aiosmtpd)")

SERVER_NAME = "mx.flowpipe.test"
CLIENT_NAME = "client.flowpipe.test"
BANNER = f"{SERVER_NAME} ESMTP flowpipe-test"
ACCEPTED = "250 2.0.0 Message accepted for delivery"
EHLO_REPLY = (
    f"250-{SERVER_NAME}\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-STARTTLS\r\n"
    "250-AUTH LOGIN PLAIN\r\n250 HELP\r\n"
)
USER, PASSWORD = "alice", "s3cret"
SUBJECT = "Grüße aus flowpipe ✓"


class Sink:
    """The server's handler: keeps every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd's name)
        self.messages.append(envelope)
        return ACCEPTED


def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> Any:
    """Accept alice's password only."""
    return smtp_module.AuthResult(
        success=auth_data.login == USER.encode() and auth_data.password == PASSWORD.encode()
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, Sink]]:
    """An aiosmtpd server on a free port: (port, handler)."""
    if shutil.which("openssl") is None:
        pytest.skip("this test needs 'openssl' (Debian package openssl), which is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *(
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
            ),
            *("-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={SERVER_NAME}"),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    port = free_port()
    sink = Sink()
    controller = controller_module.Controller(
        sink,
        hostname="127.0.0.1",
        port=port,
        server_hostname=SERVER_NAME,
        ident="ESMTP flowpipe-test",
        tls_context=context,
        authenticator=authenticate,
        auth_require_tls=False,
    )
    controller.start()  # before the capture: start() opens a connection of its own
    try:
        yield port, sink
    finally:
        controller.stop()


def captured(folder: Path, port: int, sink: Sink, talk: Callable[[], None]) -> Path:
    """Capture ``talk()``; talk again (three tries) when the kernel dropped packets of the capture.

    tcpdump's default ring buffer overflows on a busy machine during a burst of small segments;
    the log tcpdump writes beside the capture counts the drops.
    """
    for attempt in range(3):
        sink.messages.clear()
        with sniffing(folder / f"smtp-{attempt}.pcap", f"tcp port {port}") as capture:
            talk()
        if re.search(r"^0 packets dropped by kernel$", capture.with_suffix(".tcpdump.log").read_text(), re.M):
            return capture
    raise AssertionError("tcpdump dropped packets in three captures")


def message(subject: str, to: str, cc: str | None, message_id: str, body: str) -> EmailMessage:
    msg = EmailMessage()
    msg["Date"] = "Tue, 14 Nov 2023 23:13:20 +0100"
    msg["From"] = "Alice <alice@flowpipe.test>"
    msg["To"] = to
    if cc:
        msg["Cc"] = cc
    msg["Subject"] = subject
    msg["Message-ID"] = message_id
    msg["X-Mailer"] = "smtplib"
    msg.set_content(body)
    return msg


def flattened(msg: EmailMessage) -> bytes:
    """The message as smtplib's send_message puts it after DATA (before dot-stuffing)."""
    with io.BytesIO() as out:
        BytesGenerator(out).flatten(msg, linesep="\r\n")
        return out.getvalue()


def on_the_wire(data: bytes) -> bytes:
    """``data`` dot-stuffed and terminated, as DATA sends it."""
    lines = data.split(b"\r\n")[:-1]
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines) + b".\r\n"


def test_two_messages_an_rset_and_auth_in_one_session(tmp_path: Path, server: tuple[int, Sink]) -> None:
    port, sink = server
    first = message(
        SUBJECT, "Bob <bob@flowpipe.test>", "carol@flowpipe.test", "<first@flowpipe.test>", "Hi Bob,\n.dot\n"
    )
    second = message("Second message", "bob@flowpipe.test", None, "<second@flowpipe.test>", "Again.\n")

    def talk() -> None:
        with smtplib.SMTP("127.0.0.1", port, local_hostname=CLIENT_NAME, timeout=10) as client:
            client.ehlo()
            client.login(USER, PASSWORD)
            client.send_message(first)
            client.mail("alice@flowpipe.test")
            client.rcpt("dave@flowpipe.test")
            client.rset()
            client.send_message(second)

    capture = captured(tmp_path, port, sink, talk)
    assert len(sink.messages) == 2

    events = transactions(tmp_path, capture, {"smtp": {"ports": [port]}})
    assert [event["event"]["action"] for event in events] == ["mail-transaction"] * 3
    assert [event["status"] for event in events] == ["OK"] * 3
    assert not any(name.startswith("dropped") for name in events.counters)
    first_bytes, second_bytes = flattened(first), flattened(second)
    session = {"banner": BANNER, "helo": CLIENT_NAME, "auth": {"mechanism": "PLAIN"}}
    accepted = {"code": 250, "enhanced_code": "2.0.0", "message": "Message accepted for delivery"}

    sent, aborted, again = events
    assert sent["smtp"] == {
        **session,
        "mail_from": "alice@flowpipe.test",
        "mail_params": [f"size={len(first_bytes)}"],
        "rcpt_to": ["bob@flowpipe.test", "carol@flowpipe.test"],
        "data": {"bytes": len(first_bytes)},
        "replies": [
            {"command": "MAIL", "code": 250},
            {"command": "RCPT", "code": 250},
            {"command": "RCPT", "code": 250},
            {"command": "DATA", "code": 354},
            {"command": ".", "code": 250},
        ],
        "response": accepted,
    }
    assert sent["email"] == {
        "subject": SUBJECT,
        "from": {"address": ["alice@flowpipe.test"]},
        "to": {"address": ["bob@flowpipe.test"]},
        "cc": {"address": ["carol@flowpipe.test"]},
        "message_id": "first@flowpipe.test",
        "origination_timestamp": "2023-11-14T22:13:20.000Z",
        "content_type": "text/plain",
        "x_mailer": "smtplib",
    }
    commands = (
        f"mail FROM:<alice@flowpipe.test> size={len(first_bytes)}\r\n"
        "rcpt TO:<bob@flowpipe.test>\r\nrcpt TO:<carol@flowpipe.test>\r\ndata\r\n"
    ).encode()
    assert sent["client"]["bytes"] == len(commands) + len(on_the_wire(first_bytes))
    replies = "250 OK\r\n" * 3 + "354 End data with <CR><LF>.<CR><LF>\r\n" + ACCEPTED + "\r\n"
    assert sent["server"]["bytes"] == len(replies)
    assert sent["client"]["ip"] == sent["server"]["ip"] == "127.0.0.1"
    assert sent["server"]["port"] == port

    assert aborted["smtp"] == {
        **session,
        "mail_from": "alice@flowpipe.test",
        "rcpt_to": ["dave@flowpipe.test"],
        "replies": [
            {"command": "MAIL", "code": 250},
            {"command": "RCPT", "code": 250},
            {"command": "RSET", "code": 250},
        ],
        "response": {"code": 250, "message": "OK"},
    }
    assert aborted["notes"] == ["mail transaction aborted by RSET"]
    assert "email" not in aborted

    assert again["smtp"]["rcpt_to"] == ["bob@flowpipe.test"]
    assert again["smtp"]["data"] == {"bytes": len(second_bytes)}
    assert again["smtp"]["response"] == accepted
    assert again["email"]["subject"] == "Second message"
    assert again["email"]["message_id"] == "second@flowpipe.test"
    assert "cc" not in again["email"]

    text = json.dumps(events)
    assert PASSWORD not in text
    assert base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode() not in text

    detected = transactions(tmp_path, capture, {"smtp": {}})  # the unlisted port: found by its banner
    assert [event["smtp"] for event in detected] == [event["smtp"] for event in events]
    assert detected.counters["streams.detected"] == 1


def test_starttls_ends_what_can_be_seen(tmp_path: Path, server: tuple[int, Sink]) -> None:
    port, sink = server
    client_context = ssl.create_default_context()
    client_context.check_hostname = False
    client_context.verify_mode = ssl.CERT_NONE
    msg = message("Secret", "bob@flowpipe.test", None, "<tls@flowpipe.test>", "Hidden.\n")

    def talk() -> None:
        with smtplib.SMTP("127.0.0.1", port, local_hostname=CLIENT_NAME, timeout=10) as client:
            client.ehlo()
            client.starttls(context=client_context)
            client.ehlo()
            client.send_message(msg)

    capture = captured(tmp_path, port, sink, talk)
    assert len(sink.messages) == 1

    events = transactions(tmp_path, capture, {"smtp": {"ports": [port]}})
    assert len(events) == 1
    event = events[0]
    assert event["event"]["action"] == "session"
    assert event["status"] == "OK"
    assert event["notes"] == ["STARTTLS: the rest of the session is encrypted"]
    assert event["smtp"] == {
        "banner": BANNER,
        "helo": CLIENT_NAME,
        "starttls": True,
        "replies": [{"command": "EHLO", "code": 250}, {"command": "STARTTLS", "code": 220}],
        "response": {"code": 220, "message": "Ready to start TLS"},
    }
    assert event["client"]["bytes"] == len(f"ehlo {CLIENT_NAME}\r\nSTARTTLS\r\n")
    assert event["server"]["bytes"] == len(f"220 {BANNER}\r\n" + EHLO_REPLY + "220 Ready to start TLS\r\n")
    assert not any(name.startswith("dropped") for name in events.counters)

"""Client loops the corpus builder runs inside the client namespace (``ip netns exec``).

Usage: ``python clients.py smtp HOST PORT SESSIONS`` or ``python clients.py tls HOST PORT HANDSHAKES
SERVER_NAME``. Each prints one line, ``<what> <count>``, the sessions that completed.

- ``smtp``: :mod:`smtplib` sessions: EHLO, one to three messages (each MAIL FROM, one or two RCPT
  TO, DATA), QUIT; the message bodies vary in size (a few hundred bytes to about 6 KB).
- ``tls``: :mod:`ssl` handshakes with SNI and ALPN (``h2``, ``http/1.1``), alternating TLS 1.2 and
  1.3, each followed by ``GET /index.html HTTP/1.0`` (``openssl s_server -WWW`` answers with the
  file) and a read to the end (what ``openssl s_time`` cannot do: it sends no SNI).
"""

from __future__ import annotations

import smtplib
import socket
import ssl
import sys
from email.message import EmailMessage


def smtp_sessions(host: str, port: int, sessions: int) -> int:
    """Run ``sessions`` SMTP sessions against ``host:port``; return how many completed."""
    completed = 0
    for session in range(sessions):
        try:
            with smtplib.SMTP(host, port, local_hostname="client.example.test", timeout=10) as smtp:
                smtp.ehlo()
                for number in range(1 + session % 3):
                    message = EmailMessage()
                    message["From"] = f"user{session}@client.example.test"
                    recipients = [f"rcpt{session % 17}@example.test"]
                    if number % 2:
                        recipients.append(f"copy{number}@example.test")
                    message["To"] = ", ".join(recipients)
                    message["Subject"] = f"flowpipe benchmark {session}.{number}"
                    message["Message-ID"] = f"<bench-{session}-{number}@client.example.test>"
                    line = f"line {number} of the benchmark message from session {session}\n"
                    message.set_content(line * (4 + (session * 7 + number * 13) % 100))
                    smtp.send_message(message, to_addrs=recipients)
            completed += 1
        except (OSError, smtplib.SMTPException) as error:
            print(f"smtp session {session}: {error}", file=sys.stderr)
    return completed


def tls_handshakes(host: str, port: int, handshakes: int, server_name: str) -> int:
    """Run ``handshakes`` TLS sessions with SNI ``server_name``; return how many completed."""
    contexts = []
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.minimum_version = context.maximum_version = version
        context.set_alpn_protocols(["h2", "http/1.1"])
        contexts.append(context)
    completed = 0
    for number in range(handshakes):
        try:
            with (
                socket.create_connection((host, port), timeout=10) as raw,
                contexts[number % 2].wrap_socket(raw, server_hostname=server_name) as tls,
            ):
                tls.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
                while tls.recv(65536):
                    pass
            completed += 1
        except (OSError, ssl.SSLError) as error:
            print(f"tls handshake {number}: {error}", file=sys.stderr)
    return completed


def main(argv: list[str]) -> int:
    what, host, port, count = argv[0], argv[1], int(argv[2]), int(argv[3])
    if what == "smtp":
        print("smtp", smtp_sessions(host, port, count))
    elif what == "tls":
        print("tls", tls_handshakes(host, port, count, argv[4]))
    else:
        print(f"unknown client {what!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

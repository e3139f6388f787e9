"""The smtp analyzer on crafted sessions, through the real pipeline (pcap -> ip -> tcp -> protocol).

Sessions come from :func:`captures.tcp_conversation`: a list of ``(from_client, bytes)`` segments
in the order sent, each acknowledged by the next segment of the other side; a segment left out of
the frames makes a gap.
"""

from __future__ import annotations

import base64
import json
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from analyzers import Decoded, transactions
from captures import tcp_conversation

from flowpipe.plugins.decoders.protocols.smtp import SmtpAnalyzer
from flowpipe.plugins.decoders.protocols.smtp_message import email_fields
from flowpipe.transactions import NOTE_CLOSED, NOTE_OVERFLOW, NOTE_TIMEOUT, NOTE_UNMATCHED_RESPONSE

CLIENT = ("192.0.2.1", 40000)
SERVER = ("192.0.2.2", 25)
HANDSHAKE = 3
"""Frames before the first segment of a conversation."""
START = 1_700_000_000.0
STEP = 0.25
"""Seconds between segments: exact in binary, so capture times and durations are exact."""

GREETING = b"220 mx.example.com ESMTP Postfix\r\n"
EHLO = b"EHLO client.example.org\r\n"
EHLO_REPLY = (
    b"250-mx.example.com\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-STARTTLS\r\n"
    b"250-AUTH PLAIN LOGIN\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 8BITMIME\r\n"
)
QUIT, BYE = b"QUIT\r\n", b"221 2.0.0 Bye\r\n"
OK_SENDER, OK_RCPT = b"250 2.1.0 Ok\r\n", b"250 2.1.5 Ok\r\n"
GO_AHEAD = b"354 End data with <CR><LF>.<CR><LF>\r\n"
QUEUED = b"250 2.0.0 Ok: queued as 4ABC\r\n"
SUBJECT = "Grüße aus flowpipe ✓"
ENCODED_SUBJECT = "=?UTF-8?B?" + base64.b64encode(SUBJECT.encode()).decode() + "?="
MESSAGE = (
    b"Date: Tue, 14 Nov 2023 23:13:20 +0100\r\n"
    b"From: Alice Example <alice@example.org>\r\n"
    b"To: Bob <bob@example.com>,\r\n\tcarol@example.com\r\n"
    b"Cc: dave@example.net\r\n"
    b"Subject: " + ENCODED_SUBJECT.encode() + b"\r\n"
    b"Message-ID: <20231114221320.1@example.org>\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"X-Mailer: flowpipe-test 1.0\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b".a line that starts with a dot\r\n"
    b"..and one with two\r\n"
    b".\r\n"  # a line of one dot: stuffed, not the end
    b"Bye\r\n"
)
EMAIL = {
    "subject": SUBJECT,
    "from": {"address": ["alice@example.org"]},
    "to": {"address": ["bob@example.com", "carol@example.com"]},
    "cc": {"address": ["dave@example.net"]},
    "message_id": "20231114221320.1@example.org",
    "origination_timestamp": "2023-11-14T22:13:20.000Z",
    "content_type": "text/plain",
    "x_mailer": "flowpipe-test 1.0",
}


def stuffed(message: bytes) -> bytes:
    """The message as DATA sends it: dot-stuffed, with its terminating line."""
    lines = message.split(b"\r\n")[:-1]
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines) + b".\r\n"


def mail(sender: str = "alice@example.org", *recipients: str, params: str = "") -> bytes:
    """MAIL FROM, RCPT TO for each recipient and DATA, pipelined."""
    lines = [f"MAIL FROM:<{sender}>{params}"]
    lines += [f"RCPT TO:<{recipient}>" for recipient in recipients or ("bob@example.com",)]
    return ("\r\n".join([*lines, "DATA"]) + "\r\n").encode()


def run(tmp_path: Path, *exchanges: tuple[bool, bytes], **options: Any) -> Decoded:
    """The smtp events (with the protocol decoder's counters) of one conversation."""
    return transactions(
        tmp_path, tcp_conversation(CLIENT, SERVER, list(exchanges), step=STEP), {"smtp": options}
    )


def session(*middle: tuple[bool, bytes]) -> list[tuple[bool, bytes]]:
    """Greeting and EHLO, ``middle``, QUIT."""
    return [(False, GREETING), (True, EHLO), (False, EHLO_REPLY), *middle, (True, QUIT), (False, BYE)]


def replies(*pairs: tuple[str, int]) -> list[dict[str, Any]]:
    return [{"command": command, "code": code} for command, code in pairs]


# -- a mail transaction, every field --------------------------------------------------------------


def test_a_pipelined_mail_transaction_gives_envelope_replies_and_headers(tmp_path: Path) -> None:
    commands = mail(
        "alice@example.org", "bob@example.com", "nobody@example.com", params=" SIZE=467 BODY=8BITMIME"
    )
    answers = (
        OK_SENDER + OK_RCPT + b"550 5.1.1 <nobody@example.com>: Recipient address rejected\r\n" + GO_AHEAD
    )
    events = run(
        tmp_path, *session((True, commands), (False, answers), (True, stuffed(MESSAGE)), (False, QUEUED))
    )
    assert len(events) == 1
    event = events[0]
    assert event["type"] == "smtp"
    assert event["status"] == "OK"
    assert event["event"] == {
        "dataset": "smtp",
        "kind": "event",
        "category": ["network", "email"],
        "type": ["connection", "protocol"],
        "start": "2023-11-14T22:13:21.500Z",
        "end": "2023-11-14T22:13:22.250Z",
        "duration": 750_000_000,
        "action": "mail-transaction",
    }
    assert event["smtp"] == {
        "banner": "mx.example.com ESMTP Postfix",
        "helo": "client.example.org",
        "mail_from": "alice@example.org",
        "mail_params": ["SIZE=467", "BODY=8BITMIME"],
        "rcpt_to": ["bob@example.com", "nobody@example.com"],
        "data": {"bytes": len(MESSAGE)},
        "replies": replies(("MAIL", 250), ("RCPT", 250), ("RCPT", 550), ("DATA", 354), (".", 250)),
        "response": {"code": 250, "enhanced_code": "2.0.0", "message": "Ok: queued as 4ABC"},
    }
    assert event["email"] == EMAIL
    assert event["client"] == {
        "ip": CLIENT[0],
        "port": CLIENT[1],
        "bytes": len(commands) + len(stuffed(MESSAGE)),
    }
    assert event["server"] == {"ip": SERVER[0], "port": SERVER[1], "bytes": len(answers) + len(QUEUED)}
    assert event["network"]["bytes"] == event["client"]["bytes"] + event["server"]["bytes"]
    assert "notes" not in event
    assert events.counters["smtp.transactions"] == 1
    assert not any(name.startswith("dropped") for name in events.counters)


def test_a_failing_final_reply_makes_the_status_error(tmp_path: Path) -> None:
    rejected = b"554 5.7.1 Message rejected as spam\r\n"
    events = run(
        tmp_path,
        *session(
            (True, mail()),
            (False, OK_SENDER + OK_RCPT + GO_AHEAD),
            (True, stuffed(MESSAGE)),
            (False, rejected),
        ),
    )
    assert [event["status"] for event in events] == ["Error"]
    assert events[0]["event"]["type"] == ["connection", "protocol", "error"]
    assert events[0]["smtp"]["response"] == {
        "code": 554,
        "enhanced_code": "5.7.1",
        "message": "Message rejected as spam",
    }


def test_a_refused_data_ends_the_transaction_without_a_message(tmp_path: Path) -> None:
    refusal = b"554 5.5.1 Error: no valid recipients\r\n"
    events = run(
        tmp_path,
        *session(
            (True, mail("a@example.org", "x@example.com")), (False, OK_SENDER + b"550 5.1.1 no\r\n" + refusal)
        ),
    )
    assert len(events) == 1
    assert events[0]["status"] == "Error"
    assert events[0]["smtp"]["replies"] == replies(("MAIL", 250), ("RCPT", 550), ("DATA", 554))
    assert events[0]["smtp"]["response"]["code"] == 554
    assert "data" not in events[0]["smtp"] and "email" not in events[0]


def test_multi_line_replies_give_every_line_of_the_message(tmp_path: Path) -> None:
    refusal = (
        b"550-5.1.1 The email account that you tried to reach does not exist.\r\n"
        b"550-5.1.1 Please try double-checking the recipient's email address.\r\n"
        b"550 5.1.1 https://support.example.com/mail/?p=NoSuchUser\r\n"
    )
    events = run(
        tmp_path,
        *session(
            (True, b"MAIL FROM:<a@example.org>\r\nRCPT TO:<x@example.com>\r\n"), (False, OK_SENDER + refusal)
        ),
    )
    assert events[0]["smtp"]["response"] == {
        "code": 550,
        "enhanced_code": "5.1.1",
        "message": "The email account that you tried to reach does not exist.\n"
        "Please try double-checking the recipient's email address.\n"
        "https://support.example.com/mail/?p=NoSuchUser",
    }
    assert events[0]["status"] == "Error"
    assert events[0]["smtp"]["replies"] == replies(("MAIL", 250), ("RCPT", 550), ("QUIT", 221))
    assert "notes" not in events[0]  # the refusal says why: no "aborted" note


# -- several transactions per session --------------------------------------------------------------


def test_rset_in_the_middle_aborts_one_transaction_and_the_next_one_counts(tmp_path: Path) -> None:
    second = MESSAGE.replace(ENCODED_SUBJECT.encode(), b"Second")
    events = run(
        tmp_path,
        *session(
            (True, b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.com>\r\nRSET\r\n"),
            (False, OK_SENDER + OK_RCPT + b"250 2.0.0 Ok\r\n"),
            (True, mail("alice@example.org", "carol@example.com")),
            (False, OK_SENDER + OK_RCPT + GO_AHEAD),
            (True, stuffed(second)),
            (False, QUEUED),
        ),
    )
    assert [event["status"] for event in events] == ["OK", "OK"]
    aborted, sent = events
    assert aborted["notes"] == ["mail transaction aborted by RSET"]
    assert aborted["smtp"]["replies"] == replies(("MAIL", 250), ("RCPT", 250), ("RSET", 250))
    assert aborted["smtp"]["response"]["code"] == 250
    assert aborted["smtp"]["rcpt_to"] == ["bob@example.com"]
    assert "email" not in aborted and "data" not in aborted["smtp"]
    assert sent["smtp"]["rcpt_to"] == ["carol@example.com"]
    assert sent["email"]["subject"] == "Second"
    assert "notes" not in sent


def test_two_messages_in_one_session(tmp_path: Path) -> None:
    second = b"Subject: second\r\nFrom: alice@example.org\r\n\r\n...\r\n"
    events = run(
        tmp_path,
        *session(
            (True, mail()),
            (False, OK_SENDER + OK_RCPT + GO_AHEAD),
            (True, stuffed(MESSAGE)),
            (False, QUEUED),
            (True, mail("alice@example.org", "dave@example.net")),
            (False, OK_SENDER + OK_RCPT + GO_AHEAD),
            (True, stuffed(second)),
            (False, b"250 2.0.0 Ok: queued as 5DEF\r\n"),
        ),
    )
    assert [(event["email"]["subject"], event["smtp"]["data"]["bytes"]) for event in events] == [
        (SUBJECT, len(MESSAGE)),
        ("second", len(second)),
    ]
    assert [event["smtp"]["response"]["message"] for event in events] == [
        "Ok: queued as 4ABC",
        "Ok: queued as 5DEF",
    ]
    assert events[1]["event"]["start"] == "2023-11-14T22:13:22.500Z"


def test_end_of_data_pipelined_with_the_next_transaction_and_quit(tmp_path: Path) -> None:
    second = b"Subject: two\r\n\r\nbody\r\n"
    events = run(
        tmp_path,
        (False, GREETING),
        (True, EHLO),
        (False, EHLO_REPLY),
        (True, mail()),
        (False, OK_SENDER + OK_RCPT + GO_AHEAD),
        (True, stuffed(MESSAGE) + mail("alice@example.org", "erin@example.com")),
        (False, QUEUED + OK_SENDER + OK_RCPT + GO_AHEAD),
        (True, stuffed(second) + QUIT),
        (False, b"250 2.0.0 Ok: queued as 5DEF\r\n" + BYE),
    )
    assert [event["smtp"]["rcpt_to"] for event in events] == [["bob@example.com"], ["erin@example.com"]]
    assert [event["email"]["subject"] for event in events] == [SUBJECT, "two"]
    assert events[1]["smtp"]["replies"] == replies(("MAIL", 250), ("RCPT", 250), ("DATA", 354), (".", 250))


def test_bdat_chunks_make_the_message(tmp_path: Path) -> None:
    first, last = MESSAGE[:100], MESSAGE[100:]
    chunks = b"BDAT %d\r\n" % len(first) + first + b"BDAT %d LAST\r\n" % len(last) + last
    events = run(
        tmp_path,
        *session(
            (
                True,
                b"MAIL FROM:<alice@example.org> BODY=BINARYMIME\r\nRCPT TO:<bob@example.com>\r\n" + chunks,
            ),
            (False, OK_SENDER + OK_RCPT + b"250 2.0.0 100 octets received\r\n" + QUEUED),
        ),
    )
    assert len(events) == 1
    assert events[0]["smtp"]["replies"] == replies(("MAIL", 250), ("RCPT", 250), ("BDAT", 250), ("BDAT", 250))
    assert events[0]["smtp"]["data"] == {"bytes": len(MESSAGE)}
    assert events[0]["email"] == EMAIL
    assert events[0]["client"]["bytes"] == len(
        b"MAIL FROM:<alice@example.org> BODY=BINARYMIME\r\nRCPT TO:<bob@example.com>\r\n" + chunks
    )


def test_ehlo_in_a_transaction_aborts_it(tmp_path: Path) -> None:
    events = run(
        tmp_path,
        *session(
            (True, b"MAIL FROM:<a@example.org>\r\n"),
            (False, OK_SENDER),
            (True, b"EHLO again.example.org\r\n"),
            (False, EHLO_REPLY),
        ),
    )
    assert len(events) == 1
    assert events[0]["notes"] == ["mail transaction aborted by EHLO"]
    assert events[0]["smtp"]["replies"] == replies(("MAIL", 250))
    assert events[0]["smtp"]["helo"] == "client.example.org"  # the name the transaction ran under


def test_a_refused_starttls_inside_a_transaction_leaves_it_open(tmp_path: Path) -> None:
    events = run(
        tmp_path,
        *session(
            (True, b"MAIL FROM:<a@example.org>\r\n"),
            (False, OK_SENDER),
            (True, b"STARTTLS\r\n"),
            (False, b"503 5.5.1 Error: MAIL transaction in progress\r\n"),
            (True, b"RCPT TO:<bob@example.com>\r\nDATA\r\n"),
            (False, OK_RCPT + GO_AHEAD),
            (True, stuffed(MESSAGE)),
            (False, QUEUED),
        ),
    )
    assert [event["smtp"]["mail_from"] for event in events] == ["a@example.org"]
    assert events[0]["smtp"]["replies"] == replies(("MAIL", 250), ("RCPT", 250), ("DATA", 354), (".", 250))


def test_a_refused_ehlo_leaves_the_transaction_and_the_name_as_they_were(tmp_path: Path) -> None:
    events = run(
        tmp_path,
        *session(
            (True, b"MAIL FROM:<a@example.org>\r\n"),
            (False, OK_SENDER),
            (True, b"EHLO\r\n"),
            (False, b"501 5.5.4 Syntax: EHLO hostname\r\n"),
            (True, b"RCPT TO:<bob@example.com>\r\nDATA\r\n"),
            (False, OK_RCPT + GO_AHEAD),
            (True, stuffed(MESSAGE)),
            (False, QUEUED),
        ),
    )
    assert len(events) == 1
    assert events[0]["smtp"]["mail_from"] == "a@example.org"
    assert events[0]["smtp"]["rcpt_to"] == ["bob@example.com"]
    assert events[0]["smtp"]["helo"] == "client.example.org"
    assert "notes" not in events[0]


def test_a_malformed_bdat_starts_no_transaction(tmp_path: Path) -> None:
    events = run(
        tmp_path,
        *session(
            (True, b"BDAT 5 X\r\n" + mail()),
            (False, b"501 5.5.4 Syntax: BDAT count [LAST]\r\n" + OK_SENDER + OK_RCPT + GO_AHEAD),
            (True, stuffed(MESSAGE)),
            (False, QUEUED),
        ),
    )
    assert [event["smtp"]["replies"] for event in events] == [
        replies(("MAIL", 250), ("RCPT", 250), ("DATA", 354), (".", 250))
    ]


# -- sessions without a mail transaction -----------------------------------------------------------


def test_a_session_without_mail_gives_one_session_event(tmp_path: Path) -> None:
    events = run(tmp_path, *session((True, b"NOOP\r\n"), (False, b"250 2.0.0 Ok\r\n")))
    assert len(events) == 1
    event = events[0]
    assert event["event"]["action"] == "session"
    assert event["status"] == "OK"
    assert event["smtp"] == {
        "banner": "mx.example.com ESMTP Postfix",
        "helo": "client.example.org",
        "replies": replies(("EHLO", 250), ("NOOP", 250), ("QUIT", 221)),
        "response": {"code": 250, "enhanced_code": "2.0.0", "message": "Ok"},
    }
    assert event["event"]["start"] == "2023-11-14T22:13:20.750Z"  # the greeting
    assert event["client"]["bytes"] == len(EHLO) + len(b"NOOP\r\n") + len(QUIT)
    assert event["server"]["bytes"] == len(GREETING) + len(EHLO_REPLY) + len(b"250 2.0.0 Ok\r\n") + len(BYE)


def test_a_failed_auth_login_gives_an_error_session_without_credentials(tmp_path: Path) -> None:
    user, password = base64.b64encode(b"alice").decode(), base64.b64encode(b"hunter2").decode()
    events = run(
        tmp_path,
        *session(
            (True, b"AUTH LOGIN\r\n"),
            (False, b"334 VXNlcm5hbWU6\r\n"),
            (True, user.encode() + b"\r\n"),
            (False, b"334 UGFzc3dvcmQ6\r\n"),
            (True, password.encode() + b"\r\n"),
            (False, b"535 5.7.8 Error: authentication failed\r\n"),
        ),
        send_request=True,
        send_response=True,
    )
    assert len(events) == 1
    event = events[0]
    assert event["status"] == "Error"
    assert event["smtp"]["auth"] == {"mechanism": "LOGIN"}
    assert event["smtp"]["replies"] == replies(("EHLO", 250), ("AUTH", 535), ("QUIT", 221))
    assert event["smtp"]["response"]["code"] == 535
    assert event["request"] == "EHLO client.example.org\r\nAUTH LOGIN\r\nQUIT"
    text = json.dumps(event)
    assert user not in text and password not in text
    assert event["client"]["bytes"] == len(EHLO) + len(b"AUTH LOGIN\r\n") + len(user) + len(
        password
    ) + 4 + len(QUIT)


def test_auth_plain_with_an_initial_response_is_named_on_the_mail_events(tmp_path: Path) -> None:
    secret = base64.b64encode(b"\0alice\0hunter2").decode()
    events = run(
        tmp_path,
        *session(
            (True, f"AUTH PLAIN {secret}\r\n".encode()),
            (False, b"235 2.7.0 Authentication successful\r\n"),
            (True, mail()),
            (False, OK_SENDER + OK_RCPT + GO_AHEAD),
            (True, stuffed(MESSAGE)),
            (False, QUEUED),
        ),
        send_request=True,
    )
    assert len(events) == 1
    assert events[0]["smtp"]["auth"] == {"mechanism": "PLAIN"}
    assert events[0]["request"] == "MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n."
    assert secret not in json.dumps(events[0])


def test_starttls_stops_parsing_with_a_note(tmp_path: Path) -> None:
    client_hello = bytes.fromhex("1603010200010001fc0303") + bytes(range(256)) + b"\r\nMAIL FROM:<x@y>\r\n"
    events = run(
        tmp_path,
        (False, GREETING),
        (True, EHLO),
        (False, EHLO_REPLY),
        (True, b"STARTTLS\r\n"),
        (False, b"220 2.0.0 Ready to start TLS\r\n"),
        (True, client_hello),
        (False, bytes.fromhex("160303007a020000760303") + bytes(200)),
    )
    assert len(events) == 1
    event = events[0]
    assert event["event"]["action"] == "session"
    assert event["notes"] == ["STARTTLS: the rest of the session is encrypted"]
    assert event["status"] == "OK"
    assert event["smtp"]["starttls"] is True
    assert event["smtp"]["replies"] == replies(("EHLO", 250), ("STARTTLS", 220))
    assert not any(name.startswith("dropped") for name in events.counters)


def test_a_refused_starttls_goes_on_in_clear(tmp_path: Path) -> None:
    events = run(
        tmp_path,
        *session(
            (True, b"STARTTLS\r\n"),
            (False, b"454 4.7.0 TLS not available due to local problem\r\n"),
            (True, mail()),
            (False, OK_SENDER + OK_RCPT + GO_AHEAD),
            (True, stuffed(MESSAGE)),
            (False, QUEUED),
        ),
    )
    assert [event["event"]["action"] for event in events] == ["mail-transaction"]
    assert "starttls" not in events[0]["smtp"]
    assert events[0]["email"]["subject"] == SUBJECT


def paused(frames: list[tuple[float, bytes]], pauses: dict[int, float]) -> list[tuple[float, bytes]]:
    """``frames`` of a conversation with ``pauses[i]`` seconds more before its segment ``i``."""
    shifted, shift = [], 0.0
    for index, (timestamp, frame) in enumerate(frames):
        shift += pauses.get(index - HANDSHAKE, 0.0)
        shifted.append((timestamp + shift, frame))
    return shifted


def test_a_client_at_human_pace_stays_one_session(tmp_path: Path) -> None:
    """20 s before each client segment: longer than transaction_timeout, shorter than session_timeout."""
    exchanges = session(
        (True, b"AUTH LOGIN\r\n"),
        (False, b"334 VXNlcm5hbWU6\r\n"),
        (True, b"YWxpY2U=\r\n"),
        (False, b"334 UGFzc3dvcmQ6\r\n"),
        (True, b"aHVudGVyMg==\r\n"),
        (False, b"235 2.7.0 Authentication successful\r\n"),
        (True, mail()),
        (False, OK_SENDER + OK_RCPT + GO_AHEAD),
        (True, stuffed(MESSAGE)),
        (False, QUEUED),
    )
    pauses = {index: 20.0 for index, (from_client, _) in enumerate(exchanges) if from_client}
    frames = paused(tcp_conversation(CLIENT, SERVER, exchanges, step=STEP), pauses)
    events = transactions(tmp_path, frames, {"smtp": {}})
    assert [(event["event"]["action"], event.get("notes")) for event in events] == [
        ("mail-transaction", None)
    ]
    assert events[0]["smtp"]["auth"] == {"mechanism": "LOGIN"}
    assert events[0]["event"]["duration"] == 20_750_000_000  # MAIL, the replies, 20 s, the message, 250


def test_a_session_idle_past_session_timeout_is_closed(tmp_path: Path) -> None:
    exchanges = [(False, GREETING), (True, EHLO), (False, EHLO_REPLY), (True, QUIT), (False, BYE)]
    frames = paused(tcp_conversation(CLIENT, SERVER, exchanges, step=STEP), {3: 20.0})
    events = transactions(tmp_path, frames, {"smtp": {"session_timeout": "10s"}})
    assert [(event["smtp"].get("replies"), event.get("notes")) for event in events] == [
        (replies(("EHLO", 250)), None),  # closed while idle, with what was seen
        (replies(("QUIT", 221)), None),  # the rest, parsed afresh
    ]


def test_a_greeting_alone_gives_a_session_event(tmp_path: Path) -> None:
    events = run(tmp_path, (False, b"554 5.7.1 mx.example.com: no SMTP service here\r\n"))
    assert len(events) == 1
    event = events[0]
    assert event["status"] == "Error"
    assert event["smtp"] == {
        "banner": "5.7.1 mx.example.com: no SMTP service here",
        "response": {
            "code": 554,
            "enhanced_code": "5.7.1",
            "message": "mx.example.com: no SMTP service here",
        },
    }
    assert event["client"] == {"ip": CLIENT[0], "port": CLIENT[1], "bytes": 0}
    assert "notes" not in event


# -- incomplete sessions -------------------------------------------------------------------------


def test_a_connection_closed_in_the_middle_of_a_message(tmp_path: Path) -> None:
    events = run(
        tmp_path,
        (False, GREETING),
        (True, EHLO),
        (False, EHLO_REPLY),
        (True, mail()),
        (False, OK_SENDER + OK_RCPT + GO_AHEAD),
        (True, MESSAGE[:300]),
    )
    assert len(events) == 1
    event = events[0]
    assert event["status"] == "Error"
    assert event["notes"] == ["mail transaction aborted by the end of the connection"]
    assert event["smtp"]["replies"] == replies(("MAIL", 250), ("RCPT", 250), ("DATA", 354))
    assert event["smtp"]["data"] == {"bytes": 300}
    assert event["email"]["subject"] == SUBJECT
    assert events.counters["smtp.unmatched_requests"] == 1


def test_commands_without_replies_are_published_when_the_connection_closes(tmp_path: Path) -> None:
    events = run(tmp_path, (False, GREETING), (True, EHLO), (False, EHLO_REPLY), (True, mail()))
    assert len(events) == 1
    assert events[0]["status"] == "Error"
    assert events[0]["notes"] == [NOTE_CLOSED]
    assert events[0]["smtp"]["replies"] == [{"command": "MAIL"}, {"command": "RCPT"}, {"command": "DATA"}]
    assert "response" not in events[0]["smtp"]
    assert events[0]["server"]["bytes"] == 0


def test_a_command_waits_transaction_timeout_of_capture_time(tmp_path: Path) -> None:
    """The server is silent while the client goes on (every 3 s): MAIL is given up after 10 s."""
    frames = tcp_conversation(
        CLIENT,
        SERVER,
        [(False, GREETING), (True, EHLO), (False, EHLO_REPLY), (True, b"MAIL FROM:<a@example.org>\r\n")]
        + [(True, b"NOOP\r\n")] * 4
        + [(False, b"250 2.0.0 Ok\r\n")],  # answers the last NOOP, sent after the timeout
        step=3.0,
    )
    events = transactions(tmp_path, frames, {"smtp": {}})
    assert len(events) == 1
    assert events[0]["notes"] == [NOTE_TIMEOUT]
    assert events[0]["status"] == "Error"
    assert events[0]["smtp"]["replies"] == [{"command": "MAIL"}]
    assert events[0]["event"]["start"] == events[0]["event"]["end"] == "2023-11-14T22:13:38.000Z"
    assert events.counters["smtp.unmatched_requests"] == 1
    assert "smtp.unmatched_responses" not in events.counters


def test_a_reply_to_no_command_is_published_alone(tmp_path: Path) -> None:
    events = run(
        tmp_path,
        (False, GREETING),
        (True, EHLO),
        (False, EHLO_REPLY),
        (False, b"421 4.4.2 mx.example.com Error: timeout exceeded\r\n"),
    )
    assert [(event.get("event", {}).get("action"), event["status"]) for event in events] == [
        (None, "Error"),
        ("session", "OK"),
    ]
    assert events[0]["notes"] == [NOTE_UNMATCHED_RESPONSE]
    assert events[0]["smtp"]["response"]["code"] == 421


def test_a_capture_of_the_client_side_only(tmp_path: Path) -> None:
    """No reply ever comes: DATA is taken as accepted when the connection closes."""
    events = run(
        tmp_path,
        (True, EHLO),
        (True, mail()),
        (True, stuffed(MESSAGE)),
        (True, QUIT),
    )
    assert len(events) == 1
    event = events[0]
    assert event["status"] == "Error"
    assert event["notes"] == [NOTE_CLOSED]
    assert event["smtp"]["replies"] == [{"command": verb} for verb in ("MAIL", "RCPT", "DATA", ".")]
    assert event["email"] == EMAIL
    assert event["smtp"]["data"] == {"bytes": len(MESSAGE)}
    assert event["server"]["bytes"] == 0


def test_mail_transactions_beyond_max_pending_are_given_up(tmp_path: Path) -> None:
    aborted = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nRSET\r\n"
    events = run(tmp_path, (True, EHLO), (True, aborted), (True, aborted), max_pending=1)
    assert [event["notes"] for event in events] == [[NOTE_OVERFLOW], [NOTE_OVERFLOW]]
    assert events.counters["smtp.unmatched_requests"] == 2


def test_a_transaction_seen_from_its_middle_has_no_sender(tmp_path: Path) -> None:
    events = run(
        tmp_path,
        (True, b"RCPT TO:<bob@example.com>\r\nDATA\r\n"),
        (False, OK_RCPT + GO_AHEAD),
        (True, stuffed(MESSAGE)),
        (False, QUEUED),
    )
    assert len(events) == 1
    assert "mail_from" not in events[0]["smtp"]
    assert events[0]["smtp"]["rcpt_to"] == ["bob@example.com"]
    assert events[0]["email"]["message_id"] == "20231114221320.1@example.org"


def test_roles_picked_up_mid_stream_the_wrong_way_round_are_fixed_by_the_port(tmp_path: Path) -> None:
    frames = tcp_conversation(
        SERVER,  # the capture starts with the server's segment: its sender looks like the client
        CLIENT,
        [(True, GREETING), (False, EHLO), (True, EHLO_REPLY), (False, QUIT), (True, BYE)],
        handshake=False,
        close=False,
    )
    events = transactions(tmp_path, frames, {"smtp": {}})
    assert len(events) == 1
    assert events[0]["client"]["ip"] == CLIENT[0]
    assert events[0]["server"] == {
        "ip": SERVER[0],
        "port": SERVER[1],
        "bytes": len(GREETING + EHLO_REPLY + BYE),
    }
    assert events[0]["smtp"]["replies"] == replies(("EHLO", 250), ("QUIT", 221))


# -- damage and limits -----------------------------------------------------------------------------


def test_malformed_reply_lines_are_counted_and_skipped(tmp_path: Path) -> None:
    events = run(
        tmp_path,
        *session((True, b"NOOP\r\n"), (False, b"hello there\r\n25\r\n2500 Ok\r\n250 2.0.0 Ok\r\n")),
    )
    assert events[0]["smtp"]["replies"] == replies(("EHLO", 250), ("NOOP", 250), ("QUIT", 221))
    assert events.counters["dropped.smtp.malformed_reply"] == 3


def test_an_unfinished_multi_line_reply_ends_where_another_code_starts(tmp_path: Path) -> None:
    events = run(
        tmp_path,
        (False, GREETING),
        (True, EHLO),
        (False, b"250-mx.example.com\r\n"),  # the last line never comes
        (True, b"AUTH LOGIN\r\n"),
        (False, b"334 VXNlcm5hbWU6\r\n"),
        (True, b"YWxpY2U=\r\n"),
        (False, b"535 5.7.8 Error: authentication failed\r\n"),
        (True, QUIT),
        (False, BYE),
    )
    assert events[0]["smtp"]["replies"] == replies(("EHLO", 250), ("AUTH", 535), ("QUIT", 221))
    assert events.counters["dropped.smtp.malformed_reply"] == 1


def test_lines_that_are_no_commands_keep_their_place(tmp_path: Path) -> None:
    events = run(
        tmp_path,
        *session((True, b"\x16\x03\x01\x02\x00\r\n\r\n"), (False, b"500 5.5.2 Error: bad syntax\r\n" * 2)),
        send_request=True,
    )
    assert events[0]["smtp"]["replies"] == replies(("EHLO", 250), ("", 500), ("", 500), ("QUIT", 221))


def test_headers_beyond_max_message_size_are_cut_and_the_body_counted(tmp_path: Path) -> None:
    events = run(
        tmp_path,
        *session(
            (True, mail()), (False, OK_SENDER + OK_RCPT + GO_AHEAD), (True, stuffed(MESSAGE)), (False, QUEUED)
        ),
        max_message_size=120,
    )
    assert events[0]["notes"] == ["message truncated at max_message_size (120 bytes)"]
    assert events[0]["email"] == {
        "origination_timestamp": "2023-11-14T22:13:20.000Z",
        "from": {"address": ["alice@example.org"]},
        "to": {"address": ["bob@example.com"]},
    }
    assert events[0]["smtp"]["data"] == {"bytes": len(MESSAGE)}
    assert events[0]["smtp"]["response"]["code"] == 250


def test_a_command_line_longer_than_max_message_size_is_cut(tmp_path: Path) -> None:
    long_line = b"VRFY " + b"x" * 300 + b"\r\n"
    events = run(
        tmp_path,
        *session((True, long_line[:150]), (True, long_line[150:]), (False, b"502 5.5.1 VRFY refused\r\n")),
        max_message_size=100,
    )
    assert events[0]["smtp"]["replies"] == replies(("EHLO", 250), ("VRFY", 502), ("QUIT", 221))
    assert events.counters["dropped.smtp.line_too_long"] == 1
    assert events[0]["client"]["bytes"] == len(EHLO) + len(long_line) + len(QUIT)


def test_a_gap_in_the_message_body_is_counted_and_noted(tmp_path: Path) -> None:
    body = stuffed(MESSAGE)
    frames = tcp_conversation(
        CLIENT,
        SERVER,
        session(
            (True, mail()),
            (False, OK_SENDER + OK_RCPT + GO_AHEAD),
            (True, body[:350]),
            (True, body[350:380]),  # lost
            (True, body[380:]),
            (False, b""),  # the server acknowledges the whole message: the hole becomes a gap
            (False, QUEUED),
        ),
    )
    del frames[HANDSHAKE + 6]
    events = transactions(tmp_path, frames, {"smtp": {}})
    assert len(events) == 1
    assert events[0]["notes"] == ["30 bytes of the message were not captured"]
    assert events[0]["smtp"]["data"] == {"bytes": len(MESSAGE) + 1}  # the lost bytes held a stuffed dot
    assert events[0]["smtp"]["replies"][-1] == {"command": ".", "code": 250}
    assert events[0]["email"] == EMAIL


# -- a session split at every byte ------------------------------------------------------------------

SPLIT_SESSION = [
    (False, GREETING),
    (True, EHLO),
    (False, EHLO_REPLY),
    (True, b"AUTH PLAIN AGFsaWNlAGh1bnRlcjI=\r\n"),
    (False, b"235 2.7.0 Authentication successful\r\n"),
    (True, mail("alice@example.org", "bob@example.com", "carol@example.com", params=" SIZE=467")),
    (False, OK_SENDER + OK_RCPT + OK_RCPT + GO_AHEAD),
    (True, stuffed(MESSAGE)),
    (False, QUEUED),
    (True, b"MAIL FROM:<>\r\nRCPT TO:<dave@example.net>\r\nRSET\r\n"),
    (False, OK_SENDER + OK_RCPT + b"250 2.0.0 Ok\r\n"),
    (True, QUIT),
    (False, BYE),
]


SPLIT_EVERY = 23


def _stable(event: dict[str, Any]) -> dict[str, Any]:
    """The event without what differs between connections: times, client port, flow hash."""
    event = json.loads(json.dumps(event))
    del event["@timestamp"], event["event"]["start"], event["event"]["end"], event["event"]["duration"]
    del event["source"]["port"], event["client"]["port"], event["network"]["community_id"]
    return event


def test_a_session_split_at_every_byte_gives_the_same_events(tmp_path: Path) -> None:
    """Every byte offset of the session is a segment boundary in one of SPLIT_EVERY connections (the
    one that cuts at the offsets equal to it modulo SPLIT_EVERY); one more is made of 1-byte segments."""
    variants: list[list[tuple[bool, bytes]]] = []
    for remainder in range(SPLIT_EVERY):
        exchanges: list[tuple[bool, bytes]] = []
        position = 0
        for from_client, data in SPLIT_SESSION:
            first = (remainder - position) % SPLIT_EVERY
            cuts = [0, *range(first or SPLIT_EVERY, len(data), SPLIT_EVERY), len(data)]
            exchanges += [(from_client, data[start:end]) for start, end in pairwise(cuts)]
            position += len(data)
        variants.append(exchanges)
    variants.append([(side, data[i : i + 1]) for side, data in SPLIT_SESSION for i in range(len(data))])
    variants.append(SPLIT_SESSION)
    frames = []
    for index, exchanges in enumerate(variants):
        frames += tcp_conversation(
            (CLIENT[0], 20000 + index), SERVER, exchanges, start=START + index, step=0.0
        )
    events = transactions(tmp_path, frames, {"smtp": {"send_request": True, "send_response": True}})
    assert len(events) == 2 * len(variants)
    by_connection: dict[int, list[dict[str, Any]]] = {}
    for event in events:
        by_connection.setdefault(event["source"]["port"], []).append(_stable(event))
    expected = by_connection[20000 + len(variants) - 1]
    for port, found in by_connection.items():
        assert found == expected, f"split variant {port - 20000}"
    sent, aborted = expected
    assert sent["email"] == EMAIL
    assert sent["smtp"]["auth"] == {"mechanism": "PLAIN"}
    assert sent["smtp"]["data"] == {"bytes": len(MESSAGE)}
    assert sent["request"] == (
        "MAIL FROM:<alice@example.org> SIZE=467\r\nRCPT TO:<bob@example.com>\r\n"
        "RCPT TO:<carol@example.com>\r\nDATA\r\n."
    )
    assert sent["response"] == (
        "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
        "250 2.0.0 Ok: queued as 4ABC"
    )
    assert aborted["smtp"]["mail_from"] == ""
    assert aborted["smtp"]["replies"] == replies(("MAIL", 250), ("RCPT", 250), ("RSET", 250))
    assert aborted["notes"] == ["mail transaction aborted by RSET"]


# -- content detection ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "from_client", "verdict"),
    [
        (b"220 mx.example.com ESMTP Postfix\r\n", False, True),
        (b"220-mx.example.com\r\n220 ESMTP ready\r\n", False, True),
        (b"220-mx.example.com\r\n", False, None),  # the rest of the greeting may name SMTP
        (b"220 ProFTPD Server ready.\r\n", False, None),  # FTP or a discreet SMTP: the client decides
        (b"22", False, None),
        (b"230 ok\r\n", False, False),
        (b"HTTP/1.1 200 OK\r\n", False, False),
        (b"EHLO client.example.org\r\n", True, True),
        (b"helo x\r\n", True, True),
        (b"EHL", True, None),
        (b"USER anonymous\r\n", True, False),
        (b"GET / HTTP/1.1\r\n", True, False),
    ],
)
def test_detect(data: bytes, from_client: bool, verdict: bool | None) -> None:
    assert SmtpAnalyzer.detect(data, from_client) is verdict


def test_content_detection_claims_smtp_on_an_unlisted_port(tmp_path: Path) -> None:
    exchanges = session(
        (True, mail()), (False, OK_SENDER + OK_RCPT + GO_AHEAD), (True, stuffed(MESSAGE)), (False, QUEUED)
    )
    frames = tcp_conversation(CLIENT, ("192.0.2.2", 10025), exchanges)
    events = transactions(tmp_path, frames, {"smtp": {}})
    assert [event["email"]["subject"] for event in events] == [SUBJECT]
    assert events.counters["streams.detected"] == 1


def test_a_discreet_banner_is_recognised_by_the_client_ehlo(tmp_path: Path) -> None:
    exchanges = [(False, b"220 ready\r\n"), (True, EHLO), (False, b"250 ok\r\n"), (True, QUIT), (False, BYE)]
    frames = tcp_conversation(CLIENT, ("192.0.2.2", 10025), exchanges)
    events = transactions(tmp_path, frames, {"smtp": {}})
    assert [event["smtp"]["replies"] for event in events] == [replies(("EHLO", 250), ("QUIT", 221))]
    assert events[0]["smtp"]["banner"] == "ready"


def test_an_ftp_greeting_is_not_taken_for_smtp(tmp_path: Path) -> None:
    frames = tcp_conversation(
        CLIENT,
        ("192.0.2.2", 2121),
        [(False, b"220 ProFTPD Server ready.\r\n"), (True, b"USER anonymous\r\n"), (False, b"331 ok\r\n")],
    )
    events = transactions(tmp_path, frames, {"smtp": {}})
    assert events == []
    assert "streams.smtp" not in events.counters


# -- headers -> email.* ------------------------------------------------------------------------------


def test_email_fields_from_unusual_headers() -> None:
    headers = (
        b"subject: =?iso-8859-1?q?caf=E9?= =?UTF-8?B?4pyT?=\r\n"
        b"FROM: =?UTF-8?B?w4lsaXNl?= <elise@example.org>, bob@example.com\r\n"
        b"Sender: list@example.org\r\n"
        b"Reply-To: replies@example.org\r\n"
        b"Date: not a date\r\n"
        b"Message-ID:\r\n <folded@example.org>\r\n"
        b"Content-Type: Multipart/Mixed;\r\n boundary=x\r\n"
        b"Broken header line\r\n"
        b"Subject: a second subject is ignored\r\n"
        b"\r\n"
    )
    assert email_fields(headers) == {
        "subject": "café✓",
        "from": {"address": ["elise@example.org", "bob@example.com"]},
        "reply_to": {"address": ["replies@example.org"]},
        "sender": {"address": "list@example.org"},
        "message_id": "folded@example.org",
        "content_type": "multipart/mixed",
    }


def test_broken_encoded_words_are_kept_as_sent() -> None:
    assert email_fields(b"Subject: =?x-unknown?B?SGk=?= and =?UTF-8?B?@@@?=\r\n") == {
        "subject": "=?x-unknown?B?SGk=?= and =?UTF-8?B?@@@?="
    }

"""The protocol decoder: routing by port and by content, analyzer failures, time, configuration.

The echo analyzer (the reference analyzer) and a local test analyzer drive it through the real
pipeline: ``pcap -> ip -> tcp -> protocol -> file``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from analyzers import transactions
from captures import tcp_conversation, udp_frame

from flowpipe.config import load_pipeline
from flowpipe.errors import ConfigError
from flowpipe.registry import Registry

CLIENT = ("10.0.0.1", 40000)
SERVER = ("10.0.0.2", 7)

SHOUT_PLUGIN = textwrap.dedent(
    '''
    """A test analyzer: "SHOUT <word>" lines answered by the word upper-cased; "CRASH" raises."""

    from flowpipe import Message, TcpAnalyzer, Transactions, hookimpl


    class ShoutAnalyzer(TcpAnalyzer):
        """Shout test protocol."""

        default_ports = (7777,)

        @classmethod
        def detect(cls, data, from_client):
            if not from_client:
                return False
            if len(data) < 6:
                return None if b"SHOUT "[: len(data)] == data else False
            return data.startswith(b"SHOUT ")

        def open(self):
            self.transactions = Transactions(self, fill)
            self.closed = []

        def parse(self, packet, flow, direction, state):
            buffered = (state or b"") + packet.data
            *lines, rest = buffered.split(b"\\n")
            for line in lines:
                if line == b"CRASH":
                    raise ValueError("asked to crash")
                text = {"text": line.decode()}
                message = Message(packet.timestamp, packet.from_client, len(line) + 1, text)
                if packet.from_client:
                    self.transactions.request(flow, message)
                else:
                    self.transactions.response(flow, message)
            return rest

        def on_close(self, flow, state):
            self.transactions.close(flow)

        def expire(self, now):
            self.transactions.expire(now)

        def flush(self):
            self.transactions.flush()


    def fill(event, request, response):
        event["shout"] = {
            "request": request.fields["text"] if request else None,
            "response": response.fields["text"] if response else None,
        }


    @hookimpl
    def flowpipe_add_analyzers():
        return {"shout": ShoutAnalyzer}
    '''
)


@pytest.fixture
def shout(tmp_path: Path) -> list[str]:
    """The local ``shout`` analyzer, as a pipeline's ``plugins:`` list."""
    path = tmp_path / "shout_plugin.py"
    path.write_text(SHOUT_PLUGIN)
    return [str(path)]


def echo_session(port: int = 7, exchanges: list[tuple[bool, bytes]] | None = None, **kwargs: object):
    return tcp_conversation(
        CLIENT, (SERVER[0], port), exchanges or [(True, b">hi\n"), (False, b"<hi\n")], **kwargs
    )


def test_a_connection_goes_to_the_analyzer_listing_its_server_port(tmp_path: Path) -> None:
    events = transactions(tmp_path, echo_session())
    assert [event["echo"] for event in events] == [{"request": "hi", "response": "hi"}]
    event = events[0]
    assert event["type"] == "echo"
    assert event["status"] == "OK"
    assert event["network"]["protocol"] == "echo"
    assert event["network"]["transport"] == "tcp"
    assert event["network"]["bytes"] == 8
    assert event["source"] == {"ip": "10.0.0.1", "port": 40000, "bytes": 4}
    assert event["destination"] == {"ip": "10.0.0.2", "port": 7, "bytes": 4}
    assert event["client"] == event["source"]
    assert event["server"] == event["destination"]
    assert event["event"]["dataset"] == "echo"
    assert event["event"]["duration"] == 1_000_000  # the response came 1 ms after the request
    assert event["network"]["community_id"].startswith("1:")
    assert events.counters["streams.echo"] == 1


def test_ports_take_lists_and_ranges(tmp_path: Path) -> None:
    frames = [
        *echo_session(9001),
        *echo_session(9500, start=1_700_000_001.0),
        *echo_session(12, start=1_700_000_002.0),
    ]
    events = transactions(tmp_path, frames, {"echo": {"ports": [12, "9000-9002"]}})
    assert [event["destination"]["port"] for event in events] == [9001, 12]
    assert events.counters["streams.unclaimed"] == 1


def test_a_client_port_in_the_list_claims_a_connection_too(tmp_path: Path) -> None:
    frames = tcp_conversation(("10.0.0.2", 7), ("10.0.0.1", 40000), [(False, b">x\n"), (True, b"<x\n")])
    events = transactions(tmp_path, frames)
    assert [event["echo"] for event in events] == [{"request": "x", "response": "x"}]
    assert events[0]["client"]["port"] == 40000  # the requester, whoever opened the connection


def test_a_disabled_analyzer_claims_nothing(tmp_path: Path) -> None:
    events = transactions(tmp_path, echo_session(), {"echo": {"enabled": False}})
    assert events == []
    assert events.counters["streams.unclaimed"] == 1


def test_content_detection_claims_a_connection_on_an_unlisted_port(tmp_path: Path, shout: list[str]) -> None:
    frames = echo_session(
        5555, [(True, b"SHO"), (True, b"UT a\nSHOUT b\n"), (False, b"A\n"), (False, b"B\n")]
    )
    events = transactions(tmp_path, frames, plugins=shout)
    assert [event["shout"] for event in events] == [
        {"request": "SHOUT a", "response": "A"},
        {"request": "SHOUT b", "response": "B"},
    ]
    assert events.counters["streams.detected"] == 1
    assert events.counters["streams.shout"] == 1


def test_content_detection_can_be_turned_off(tmp_path: Path, shout: list[str]) -> None:
    frames = echo_session(5555, [(True, b"SHOUT a\n"), (False, b"A\n")])
    events = transactions(tmp_path, frames, plugins=shout, content_detection=False)
    assert events == []
    assert events.counters["streams.unclaimed"] == 1


def test_content_no_analyzer_recognises_stays_unclaimed(tmp_path: Path, shout: list[str]) -> None:
    frames = echo_session(5555, [(True, b"WHISPER a\n"), (False, b"a\n")])
    events = transactions(tmp_path, frames, plugins=shout)
    assert events == []
    assert events.counters["streams.unclaimed"] == 1
    assert "streams.detected" not in events.counters


def test_detection_gives_up_after_detection_bytes(tmp_path: Path, shout: list[str]) -> None:
    frames = echo_session(5555, [(True, b"SHOUT a\n"), (False, b"A\n")])
    events = transactions(tmp_path, frames, plugins=shout, detection_bytes=3)
    assert events == []
    assert events.counters["streams.unclaimed"] == 1


def test_an_analyzer_that_raises_is_counted_and_the_stream_goes_on(tmp_path: Path, shout: list[str]) -> None:
    frames = echo_session(
        7777,
        [(True, b"SHOUT a\n"), (False, b"A\n"), (True, b"CRASH\n"), (True, b"SHOUT c\n"), (False, b"C\n")],
    )
    events = transactions(tmp_path, frames, plugins=shout)
    assert [event["shout"] for event in events] == [
        {"request": "SHOUT a", "response": "A"},
        {"request": "SHOUT c", "response": "C"},
    ]
    assert events.counters["dropped.shout.analyzer_error"] == 1


def test_pipelined_requests_pair_with_responses_in_order(tmp_path: Path) -> None:
    frames = echo_session(exchanges=[(True, b">1\n>2\n>3\n"), (False, b"<1\n<2\n"), (False, b"!no\n")])
    events = transactions(tmp_path, frames)
    assert [(event["echo"], event["status"]) for event in events] == [
        ({"request": "1", "response": "1"}, "OK"),
        ({"request": "2", "response": "2"}, "OK"),
        ({"request": "3", "error": "no"}, "Error"),
    ]


def test_messages_split_at_every_byte_give_the_same_events(tmp_path: Path) -> None:
    request, response = b">split me\n>again\n", b"<split me\n<again\n"
    expected = None
    for cut in range(1, len(request)):
        frames = echo_session(
            exchanges=[
                (True, request[:cut]),
                (True, request[cut:]),
                (False, response[:cut]),
                (False, response[cut:]),
            ]
        )
        events = [(event["echo"], event["source"]["bytes"]) for event in transactions(tmp_path, frames)]
        if expected is None:
            expected = events
        assert events == expected, cut
    assert expected == [
        ({"request": "split me", "response": "split me"}, 10),
        ({"request": "again", "response": "again"}, 7),
    ]


def test_a_request_without_response_is_published_when_the_connection_closes(tmp_path: Path) -> None:
    events = transactions(tmp_path, echo_session(exchanges=[(True, b">lonely\n")]))
    assert len(events) == 1
    assert events[0]["status"] == "Error"
    assert events[0]["notes"] == ["no response before the connection closed"]
    assert events[0]["destination"]["bytes"] == 0
    assert "duration" not in events[0]["event"]
    assert events.counters["echo.unmatched_requests"] == 1


def test_a_response_without_request_is_published_with_a_note(tmp_path: Path) -> None:
    events = transactions(tmp_path, echo_session(exchanges=[(False, b"<orphan\n")]))
    assert [event["echo"] for event in events] == [{"response": "orphan"}]
    assert events[0]["notes"] == ["response without a request"]
    assert events[0]["status"] == "OK"
    assert events[0]["client"]["ip"] == "10.0.0.1"  # the response's receiver
    assert events.counters["echo.unmatched_responses"] == 1


def test_a_request_times_out_on_capture_time(tmp_path: Path) -> None:
    waiting = echo_session(exchanges=[(True, b">slow\n")], close=False)
    later = echo_session(9, [(True, b">other\n")], start=1_700_000_012.0)  # 12 s later, another port
    events = transactions(
        tmp_path, [*waiting, *later], {"echo": {"ports": [7, 9], "transaction_timeout": "5s"}}
    )
    assert [(event["echo"], event.get("notes")) for event in events] == [
        ({"request": "slow"}, ["no response within transaction_timeout"]),
        ({"request": "other"}, ["no response before the connection closed"]),
    ]


def test_requests_beyond_max_pending_are_published_alone(tmp_path: Path) -> None:
    frames = echo_session(exchanges=[(True, b">1\n>2\n>3\n"), (False, b"<3\n")])
    events = transactions(tmp_path, frames, {"echo": {"max_pending": 1}})
    assert [(event["echo"], event.get("notes")) for event in events] == [
        ({"request": "1"}, ["no response: more than max_pending requests waited on the connection"]),
        ({"request": "2"}, ["no response: more than max_pending requests waited on the connection"]),
        ({"request": "3", "response": "3"}, None),
    ]


def test_end_of_input_publishes_what_waits(tmp_path: Path) -> None:
    frames = echo_session(exchanges=[(True, b">pending\n")], close=False)
    events = transactions(tmp_path, frames)
    assert [(event["echo"], event["notes"]) for event in events] == [
        ({"request": "pending"}, ["no response before the connection closed"])
    ]


def test_send_request_and_send_response_add_the_raw_text(tmp_path: Path) -> None:
    events = transactions(tmp_path, echo_session(), {"echo": {"send_request": True, "send_response": True}})
    assert (events[0]["request"], events[0]["response"]) == (">hi", "<hi")
    assert "request" not in transactions(tmp_path, echo_session())[0]


def test_a_long_line_is_truncated_at_max_message_size(tmp_path: Path) -> None:
    frames = echo_session(exchanges=[(True, b">" + b"x" * 99 + b"\n>short\n"), (False, b"<x\n<short\n")])
    events = transactions(tmp_path, frames, {"echo": {"max_message_size": 10}})
    assert [(event["echo"], event.get("notes")) for event in events] == [
        ({"request": "x" * 9, "response": "x"}, ["message truncated at max_message_size (10 bytes)"]),
        ({"request": "short", "response": "short"}, None),
    ]


def test_udp_on_no_listed_port_is_counted_unclaimed(tmp_path: Path) -> None:
    frames = [(1_700_000_000.0, udp_frame("10.0.0.1", "10.0.0.2", 5000, 5001, b"data"))]
    events = transactions(tmp_path, frames)
    assert events == []
    assert events.counters["datagrams.unclaimed"] == 1


# -- configuration -----------------------------------------------------------------------------


def write_pipeline(tmp_path: Path, protocol_section: str, plugins: list[str] | None = None) -> Path:
    path = tmp_path / "pipeline.yml"
    listing = f"plugins: [{', '.join(plugins)}]\n" if plugins else ""
    path.write_text(
        listing
        + "inputs: [{type: pcap, files: [x.pcap]}]\n"
        + "decoders:\n  - type: ip\n  - type: tcp\n  - type: protocol\n"
        + textwrap.indent(protocol_section, "    ")
        + "outputs: [{type: stdout}]\n"
    )
    return path


def config_errors(path: Path) -> str:
    with pytest.raises(ConfigError) as raised:
        load_pipeline(path, Registry.default(), environ={})
    return str(raised.value)


def test_an_unknown_protocol_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, "protocols:\n  ecoh: {ports: [7]}\n")
    message = config_errors(path)
    assert "pipeline.yml:7:" in message
    assert "decoders.2.protocols.ecoh" in message
    assert "did you mean 'echo'" in message


def test_a_bad_port_names_its_place(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, "protocols:\n  echo: {ports: [7, 70000]}\n")
    message = config_errors(path)
    assert "decoders.2.protocols.echo.ports.1" in message
    assert "ports are 1-65535, got 70000" in message


def test_two_analyzers_may_not_claim_one_port(tmp_path: Path, shout: list[str]) -> None:
    path = write_pipeline(tmp_path, "protocols:\n  shout: {ports: [7]}\n", plugins=shout)
    message = config_errors(path)
    assert "decoders.2.protocols.shout.ports" in message
    assert "tcp port 7 is claimed by both 'echo' and 'shout'" in message


def test_a_disabled_analyzer_frees_its_ports(tmp_path: Path, shout: list[str]) -> None:
    path = write_pipeline(
        tmp_path, "protocols:\n  shout: {ports: [7]}\n  echo: {enabled: false}\n", plugins=shout
    )
    spec = load_pipeline(path, Registry.default(), environ={})
    protocols = spec.decoders[2].config.protocols
    assert protocols.shout.ports == (7,)
    assert protocols.echo.enabled is False
    assert protocols.echo.ports == (7,)


def test_the_default_chain_ends_with_the_protocol_decoder(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yml"
    path.write_text("inputs: [{type: pcap, files: [x.pcap]}]\noutputs: [{type: stdout}]\n")
    spec = load_pipeline(path, Registry.default(), environ={})
    assert [decoder.type for decoder in spec.decoders] == ["ip", "tcp", "protocol"]
    assert spec.decoders[2].config.protocols.echo.ports == (7,)

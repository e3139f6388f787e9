"""The ``echo`` analyzer: Packetbeat's tutorial protocol, and the reference for analyzer authors.

The protocol is line based: the client sends requests that start with ``>``, the server answers
each with a line that starts with ``<`` (success) or ``!`` (an error message, also the answer to a
client line without ``>``); lines end with ``\\n`` (a ``\\r`` before it is ignored). Requests may
be pipelined. A server line without a marker is counted as ``dropped.echo.malformed``.

The module has the four parts every analyzer has, each with one job:

1. options (:class:`EchoAnalyzer.options`: none of its own beyond the common ones);
2. the parser (:class:`EchoParser`): bytes of one direction -> messages, bounded by
   ``max_message_size``;
3. transactions: the shared :class:`~flowpipe.Transactions` helper pairs requests with
   responses in order;
4. publishing (:func:`fill_event`): a request/response pair -> the protocol's event fields.

Event fields: ``echo.request`` and ``echo.response`` (the line without its marker), and for an
error answer ``echo.error`` with ``status: Error``.
"""

from __future__ import annotations

from flowpipe import (
    TO_SERVER,
    AppPacket,
    Event,
    FlowInfo,
    Message,
    StreamBuffer,
    TcpAnalyzer,
    Transactions,
    hookimpl,
)

__all__ = ["EchoAnalyzer", "EchoParser"]

REQUEST, RESPONSE, ERROR = b">", b"<", b"!"
MARKERS = (REQUEST, RESPONSE, ERROR)


class EchoParser:
    """Splits one direction of a connection into echo messages."""

    __slots__ = ("buffer", "discarding", "start")

    def __init__(self, limit: int) -> None:
        self.buffer = StreamBuffer(limit)
        self.discarding = False
        """A line outgrew the limit: skip to its end."""
        self.start = 0.0
        """Capture time of the first byte of the line being assembled."""

    def feed(self, data: bytes, timestamp: float, from_client: bool) -> list[Message]:
        """Parse ``data``; return the messages it completes (a truncated line carries a note)."""
        messages: list[Message] = []
        if not self.buffer.data:
            self.start = timestamp
        cut = self.buffer.feed(data)
        while True:
            line = self.buffer.line()
            if line is None:
                break
            size = len(line)
            if self.discarding:  # the end of a line already published as truncated
                self.discarding = False
            else:
                messages.append(_message(line, size, self.start, from_client))
            self.start = timestamp
        if cut:  # the line does not fit in max_message_size: publish what fits, skip its rest
            if not self.discarding:
                message = _message(
                    self.buffer.take(self.buffer.limit), self.buffer.limit, self.start, from_client
                )
                message.notes.append(f"message truncated at max_message_size ({self.buffer.limit} bytes)")
                messages.append(message)
                self.discarding = True
            self.buffer.clear()
            rest = data[len(data) - cut :]
            newline = rest.find(b"\n")
            if newline >= 0:  # the long line ended in this chunk: parse what follows it
                self.discarding = False
                self.start = timestamp
                messages.extend(self.feed(rest[newline + 1 :], timestamp, from_client))
        return messages


def _message(line: bytes, size: int, timestamp: float, from_client: bool) -> Message:
    text = line.rstrip(b"\r\n")
    return Message(
        timestamp=timestamp,
        from_client=from_client,
        size=size,
        fields={
            "marker": text[:1],
            "text": (text[1:] if text[:1] in MARKERS else text).decode("utf-8", "replace"),
        },
        raw=text,
        error=text[:1] == ERROR,
    )


class EchoState:
    """Per connection: a parser for each direction."""

    __slots__ = ("client", "server")

    def __init__(self, limit: int) -> None:
        self.client = EchoParser(limit)
        self.server = EchoParser(limit)


class EchoAnalyzer(TcpAnalyzer):
    """The echo tutorial protocol: '>' requests answered by '<' or '!' lines."""

    default_ports = (7,)

    def open(self) -> None:
        self.transactions = Transactions(self, fill_event)

    def parse(self, packet: AppPacket, flow: FlowInfo, direction: int, state: EchoState | None) -> EchoState:
        if state is None:
            state = EchoState(self.config.max_message_size)
        to_server = direction == TO_SERVER
        parser = state.client if to_server else state.server
        for message in parser.feed(packet.data, packet.timestamp, packet.from_client):
            marker = message.fields["marker"]
            if to_server:  # a request; one without ">" is invalid and will be answered with "!"
                if marker != REQUEST:
                    message.notes.append("request without the '>' marker")
                self.transactions.request(flow, message)
            elif marker in (RESPONSE, ERROR):
                self.transactions.response(flow, message)
            else:
                self.drop("malformed")
        return state

    def on_close(self, flow: FlowInfo, state: EchoState | None) -> None:
        self.transactions.close(flow)

    def expire(self, now: float) -> None:
        self.transactions.expire(now)

    def flush(self) -> None:
        self.transactions.flush()


def fill_event(event: Event, request: Message | None, response: Message | None) -> None:
    """Add the echo fields of a transaction."""
    echo: dict[str, str] = {}
    if request is not None:
        echo["request"] = request.fields["text"]
    if response is not None:
        if response.error:
            echo["error"] = response.fields["text"]
        else:
            echo["response"] = response.fields["text"]
    event["echo"] = echo


@hookimpl
def flowpipe_add_analyzers() -> dict[str, type[TcpAnalyzer]]:
    return {"echo": EchoAnalyzer}

"""Memory per idle tracked connection: ``python idle_memory.py [--connections N]`` prints JSON.

The real decoders of the full pipeline (``ip`` with flow records, ``tcp``, ``protocol`` with every
analyzer; built from a pipeline file as ``flowpipe run`` builds them) are fed complete TCP
handshakes (SYN, SYN-ACK, ACK) from ``N`` distinct clients to 198.51.100.1:80, 10 µs of capture
time apart, so every connection is established, idle, and still tracked at the end (well under
every timeout, with ``max_flows`` and ``max_connections`` above ``N``). Nothing is flushed. The
result is the growth of the process's resident set size from after a warm-up of 2,000
connections to after the ``N`` more, divided by ``N``: what one idle connection costs the ``ip``
flow table, the ``tcp`` decoder and the ``protocol`` decoder together, allocator overhead
included. Every connection comes from another client address: the worst case for the ``ip``
decoder's cache of address texts (about 110 bytes per address, at most 65,536 addresses). Frames
carry zero checksums (flowpipe does not verify them).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import struct
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from flowpipe.config import load_pipeline
from flowpipe.packet import LINKTYPE_ETHERNET, PacketBatch
from flowpipe.pipeline import Pipeline
from flowpipe.registry import Registry

SERVER = bytes((198, 51, 100, 1))
FIRST_CLIENT = 10 << 24
T0 = 1_700_000_000.0
WARM_UP = 2_000
BATCH = 256
_FRAME = struct.Struct("!6s6sH BBHHHBBH4s4s HHIIBBHHH")
"""Ethernet, IPv4 (no options) and TCP (no options) headers: a 54-byte frame."""
_CLIENT_MAC, _SERVER_MAC = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
SYN, SYN_ACK, ACK = 0x02, 0x12, 0x10

PIPELINE = """
inputs:
  - type: pcap
    files: [{corpus}]
decoders:
  - type: ip
    flows: {{max_flows: {capacity}}}
  - type: tcp
    max_connections: {capacity}
  - type: protocol
outputs:
  - type: discard
plugins: [{plugins}]
"""


def frame(source: bytes, destination: bytes, sport: int, dport: int, seq: int, ack: int, flags: int) -> bytes:
    to_server = destination == SERVER
    return _FRAME.pack(
        _SERVER_MAC if to_server else _CLIENT_MAC, _CLIENT_MAC if to_server else _SERVER_MAC, 0x0800,
        0x45, 0, 40, 0, 0x4000, 64, 6, 0, source, destination,
        sport, dport, seq, ack, 0x50, flags, 64240, 0, 0,
    )  # fmt: skip


def handshakes(first: int, count: int) -> Iterator[PacketBatch]:
    """Batches of the handshake frames of connections ``first`` to ``first + count - 1``, made as
    they are taken (so the frames of one batch at a time are alive)."""
    batch = PacketBatch(LINKTYPE_ETHERNET)
    for index in range(first, first + count):
        client = (FIRST_CLIENT + index).to_bytes(4, "big")
        port = 1024 + index % 60000
        client_seq, server_seq = (index * 7919) & 0xFFFFFFFF, (index * 104729) & 0xFFFFFFFF
        when = T0 + index * 1e-5
        batch.append(when, frame(client, SERVER, port, 80, client_seq, 0, SYN), 54)
        client_next, server_next = (client_seq + 1) & 0xFFFFFFFF, (server_seq + 1) & 0xFFFFFFFF
        batch.append(when + 1e-6, frame(SERVER, client, 80, port, server_seq, client_next, SYN_ACK), 54)
        batch.append(when + 2e-6, frame(client, SERVER, port, 80, client_next, server_next, ACK), 54)
        if len(batch) >= BATCH:
            yield batch
            batch = PacketBatch(LINKTYPE_ETHERNET)
    if len(batch):
        yield batch


def rss() -> int:
    """This process's resident set size in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def feed(pipeline: Pipeline, batches: Iterable[PacketBatch]) -> None:
    """Pass batches through the decoder chain as the pipeline's worker does (events discarded)."""
    for batch in batches:
        items: object = batch
        events: list[object] = []
        for decoder in pipeline.decoders:
            items = decoder.decode(items, events)
            if not items:
                break


def measure(connections: int, corpus: Path) -> dict[str, object]:
    """Feed the warm-up and then ``connections`` handshakes; the RSS growth over the latter."""
    registry = Registry.default()
    with tempfile.TemporaryDirectory(prefix="fpb-idle-") as folder:
        path = Path(folder) / "pipeline.yml"
        plugins = Path(__file__).resolve().parent / "bench_plugins.py"
        path.write_text(PIPELINE.format(corpus=corpus, capacity=2 * (connections + WARM_UP), plugins=plugins))
        pipeline = Pipeline(load_pipeline(path, registry), registry)
    pipeline.open()
    try:
        feed(pipeline, handshakes(0, WARM_UP))
        gc.collect()
        before = rss()
        started = time.perf_counter()
        feed(pipeline, handshakes(WARM_UP, connections))
        seconds = time.perf_counter() - started
        gc.collect()
        after = rss()
        tracked = {
            "flows": len(pipeline.decoders[0].flows.flows),
            "connections": pipeline.decoders[1].context.counters.gauges.get("connections", 0),
        }
    finally:
        pipeline.close()
    if tracked != {"flows": connections + WARM_UP, "connections": connections + WARM_UP}:
        raise RuntimeError(f"not every connection is tracked: {tracked}")
    return {
        "connections": connections,
        "rss_before_bytes": before,
        "rss_after_bytes": after,
        "bytes_per_connection": (after - before) / connections,
        "tracked": tracked,
        "packets_per_second": 3 * connections / seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=100_000)
    parser.add_argument(
        "--corpus", type=Path, required=True, help="any capture file (the pipeline file names one)"
    )
    args = parser.parse_args()
    print(json.dumps(measure(args.connections, args.corpus.resolve())))
    return 0


if __name__ == "__main__":
    sys.exit(main())

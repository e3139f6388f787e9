"""Capture real programs' traffic on the loopback device with tcpdump, for analyzer tests.

::

    with sniffing(tmp_path / "http.pcap", f"tcp port {port}") as capture:
        subprocess.run(["curl", ...])
    events = transactions(tmp_path, capture)

:func:`sniffing` starts ``tcpdump -i lo`` with the capture filter, waits until it listens, and on
leaving the block waits a moment for the last packets, stops it with SIGINT and waits until the
file is complete. The test is skipped when tcpdump is not installed or may not capture (not
root). :func:`free_port` picks a port for a server.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = ["free_port", "sniffing", "wait_for_port"]

START_TIMEOUT = 10.0
SETTLE = 0.3
"""Seconds to wait after the traffic for its last packets to reach the capture."""


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
    """Wait until a TCP server accepts connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s") from None
            time.sleep(0.05)


@contextmanager
def sniffing(path: Path, capture_filter: str, interface: str = "lo") -> Iterator[Path]:
    """Capture ``interface`` into ``path`` with ``capture_filter`` while the block runs."""
    if shutil.which("tcpdump") is None:
        pytest.skip("this test needs 'tcpdump' (Debian package tcpdump), which is not installed")
    log = path.with_suffix(".tcpdump.log")
    with log.open("w") as stderr:
        tcpdump = subprocess.Popen(
            [
                "tcpdump",
                "-i",
                interface,
                "-Z",
                "root",
                "-U",
                "--immediate-mode",
                "-B",  # a 16 MiB kernel buffer: a busy machine drops nothing
                "16384",
                "-w",
                str(path),
                capture_filter,
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "listening on" not in log.read_text():
            if tcpdump.poll() is not None:
                message = log.read_text().strip()
                if "ermission" in message or "not permitted" in message:
                    pytest.skip(f"tcpdump may not capture here: {message}")
                raise RuntimeError(f"tcpdump failed: {message}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"tcpdump did not start in {START_TIMEOUT} s: {log.read_text()}")
            time.sleep(0.02)
        yield path
        time.sleep(SETTLE)
    finally:
        tcpdump.send_signal(signal.SIGINT)
        try:
            tcpdump.wait(timeout=10)
        except subprocess.TimeoutExpired:
            tcpdump.kill()
            tcpdump.wait()

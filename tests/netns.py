"""Two network namespaces joined by a veth pair, for tests that capture live traffic.

:func:`veth_pair` makes namespaces with names unique to the test run, one veth end in each (IPv6
off, so the links stay quiet until a test sends something), and deletes them afterwards, whatever
happened. Where the machine forbids namespaces (not root, no CAP_SYS_ADMIN, a container that
denies them) the test is skipped with the reason; any other failure fails the test.

Commands run inside a namespace with ``ip netns exec``; :func:`in_namespace` runs Python code in
a thread that has joined one (a socket belongs to the namespace it was made in, so what it makes
there can be used from any thread afterwards).
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

__all__ = ["Side", "VethPair", "in_namespace", "require_programs", "veth_pair"]

CLONE_NEWNET = 0x40000000
FORBIDDEN = ("Operation not permitted", "Permission denied")
QUIET_IPV6 = (  # no router solicitations, DAD or MLD on links made afterwards (where IPv6 exists)
    "for name in all default; do conf=/proc/sys/net/ipv6/conf/$name/disable_ipv6; "
    '[ ! -e "$conf" ] || echo 1 > "$conf"; done'
)
T = TypeVar("T")


@dataclass(frozen=True)
class Side:
    """One end of the pair: its namespace, its veth device and its IPv4 address."""

    namespace: str
    device: str
    address: str

    def command(self, *args: str) -> list[str]:
        """``args`` as a command run inside this side's namespace."""
        return ["ip", "netns", "exec", self.namespace, *args]

    def run(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run ``args`` in this side's namespace; fail the test if it fails."""
        result = subprocess.run(self.command(*args), capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"{' '.join(args)} failed ({result.returncode}): {result.stderr}"
        return result


@dataclass(frozen=True)
class VethPair:
    """A client and a server namespace, linked by a veth pair in one /24."""

    client: Side
    server: Side


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def _must(*args: str) -> None:
    result = _ip(*args)
    assert result.returncode == 0, f"ip {' '.join(args)} failed: {result.stderr.strip()}"


@contextmanager
def veth_pair(client_address: str = "192.0.2.1", server_address: str = "192.0.2.2") -> Iterator[VethPair]:
    """Create the namespaces and the veth pair (addresses in one /24); delete them on exit."""
    if shutil.which("ip") is None:
        pytest.skip("live capture tests need the ip command (iproute2)")
    token = secrets.token_hex(3)
    pair = VethPair(
        Side(f"fpcli-{token}", f"fpc{token}", client_address),
        Side(f"fpsrv-{token}", f"fps{token}", server_address),
    )
    created: list[str] = []
    try:
        for side in (pair.client, pair.server):
            result = _ip("netns", "add", side.namespace)
            if result.returncode != 0:
                if any(reason in result.stderr for reason in FORBIDDEN):
                    pytest.skip(f"this machine forbids network namespaces: {result.stderr.strip()}")
                pytest.fail(f"ip netns add failed: {result.stderr.strip()}")
            created.append(side.namespace)
            side.run("sh", "-c", QUIET_IPV6)
            _must("-n", side.namespace, "link", "set", "lo", "up")
        client, server = pair.client, pair.server
        peer = ("peer", "name", server.device, "netns", server.namespace)
        _must("link", "add", client.device, "netns", client.namespace, "type", "veth", *peer)
        for side in (pair.client, pair.server):
            _must("-n", side.namespace, "addr", "add", f"{side.address}/24", "dev", side.device)
            _must("-n", side.namespace, "link", "set", side.device, "up")
        yield pair
    finally:
        for namespace in created:
            _ip("netns", "delete", namespace)


def in_namespace(namespace: str, function: Callable[..., T], *args: Any) -> T:
    """Call ``function(*args)`` in a thread that has joined ``namespace``; return its result."""
    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        descriptor = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
        try:
            if libc.setns(descriptor, CLONE_NEWNET) != 0:
                error = ctypes.get_errno()
                raise OSError(error, f"setns {namespace}: {os.strerror(error)}")
            results.append(function(*args))
        except BaseException as error:  # raised again in the caller's thread
            errors.append(error)
        finally:
            os.close(descriptor)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return results[0]


def require_programs(*names: str) -> None:
    """Skip the test unless every program named is installed."""
    for name in names:
        if shutil.which(name) is None:
            pytest.skip(f"this test needs {name!r}, which is not installed")

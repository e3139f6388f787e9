"""The tls analyzer on real handshakes: openssl s_client against openssl s_server, captured with tcpdump.

Four connections to one server with a self-signed certificate made by ``openssl req``: TLS 1.2
with a new session, TLS 1.2 resuming it, TLS 1.3 with a new session, TLS 1.3 resuming it. The
events must carry what the programs negotiated; where tshark is installed, the JA3/JA3S
fingerprints must equal tshark's and JA4 must equal one computed here from tshark's dissection.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from analyzers import transactions
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sniff import free_port, sniffing, wait_for_port

pytestmark = pytest.mark.slow

SERVER_NAME = "flowpipe.test"
REQUEST = b"GET / HTTP/1.0\r\n\r\n"
CLIENTS = (
    ("-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256", "-sess_out", "tls12.session"),
    ("-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256", "-sess_in", "tls12.session"),
    ("-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256", "-sess_out", "tls13.session"),
    ("-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256", "-sess_in", "tls13.session"),
)


def openssl(*args: str, cwd: Path, stdin: bytes = b"") -> str:
    done = subprocess.run(["openssl", *args], cwd=cwd, input=stdin, capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode(errors="replace")


@pytest.fixture(scope="module")
def handshakes(tmp_path_factory):
    """Capture the four handshakes; return (events, capture path, port, server certificate DER)."""
    if shutil.which("openssl") is None:
        pytest.skip("this test needs 'openssl' (Debian package openssl), which is not installed")
    folder = tmp_path_factory.mktemp("tls")
    request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-out", "cert.pem"]
    request += ["-days", "30", "-subj", f"/CN={SERVER_NAME}/O=Flowpipe"]
    openssl(*request, "-addext", f"subjectAltName=DNS:{SERVER_NAME},DNS:www.{SERVER_NAME}", cwd=folder)
    port = free_port()
    serve = ["openssl", "s_server", "-accept", str(port), "-cert", "cert.pem", "-key", "key.pem"]
    serve += ["-alpn", "h2,http/1.1", "-www", "-quiet"]
    server = subprocess.Popen(serve, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    connect = ["s_client", "-connect", f"127.0.0.1:{port}", "-servername", SERVER_NAME, "-alpn", "h2"]
    connect += ["-groups", "X25519", "-ign_eof"]
    try:
        wait_for_port(port)
        with sniffing(folder / "tls.pcap", f"tcp port {port}") as capture:
            outputs = [openssl(*connect, *options, cwd=folder, stdin=REQUEST) for options in CLIENTS]
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert ["Reused," in output for output in outputs] == [False, True, False, True], outputs
    der = x509.load_pem_x509_certificate((folder / "cert.pem").read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    events = transactions(folder, capture, {"tls": {"ports": [port]}})
    return events, capture, port, der


def test_one_event_per_handshake(handshakes):
    events, _, port, _ = handshakes
    assert len(events) == 4
    for event in events:
        assert (event["status"], event["type"], event["network"]["protocol"]) == ("OK", "tls", "tls")
        assert event["server"]["port"] == port
        assert event["destination"]["domain"] == SERVER_NAME
        assert "notes" not in event
        tls = event["tls"]
        assert tls["established"] is True
        assert tls["client"]["server_name"] == SERVER_NAME
        assert tls["detailed"]["client_hello"]["extensions"]["application_layer_protocol_negotiation"] == [
            "h2"
        ]


def test_tls12_new_session_with_the_certificate(handshakes):
    events, _, _, der = handshakes
    tls = events[0]["tls"]
    certificate = x509.load_der_x509_certificate(der)
    assert (tls["version"], tls["version_protocol"]) == ("1.2", "tls")
    assert tls["cipher"] == "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
    assert tls["next_protocol"] == "h2"
    assert tls["curve"] == "x25519"  # from the ServerKeyExchange
    assert tls["resumed"] is False
    server = tls["server"]
    assert server["subject"] == f"O=Flowpipe,CN={SERVER_NAME}"
    assert server["issuer"] == f"O=Flowpipe,CN={SERVER_NAME}"
    assert server["x509"]["subject"]["common_name"] == [SERVER_NAME]
    assert server["x509"]["issuer"]["organization"] == ["Flowpipe"]
    assert server["x509"]["alternative_names"] == [SERVER_NAME, f"www.{SERVER_NAME}"]
    assert server["x509"]["public_key_algorithm"] == "RSA"
    assert server["x509"]["public_key_size"] == 2048
    assert server["x509"]["serial_number"] == f"{certificate.serial_number:X}"
    assert server["not_before"] == certificate.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert server["not_after"] == certificate.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert server["hash"] == {"sha1": hashlib.sha1(der).hexdigest().upper()}
    assert tls["detailed"]["server_certificate"]["subject"] == {
        "common_name": SERVER_NAME,
        "organization": "Flowpipe",
    }


def test_tls12_resumed_session(handshakes):
    events, _, _, _ = handshakes
    tls = events[1]["tls"]
    assert (tls["version"], tls["cipher"], tls["next_protocol"]) == (
        "1.2",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        "h2",
    )
    assert tls["resumed"] is True
    assert tls["detailed"]["resumption_method"] == "ticket"  # openssl resumes with session tickets
    assert "x509" not in tls["server"]  # no certificate nor key exchange in an abbreviated handshake
    assert "curve" not in tls
    assert events[1]["client"]["bytes"] < events[0]["client"]["bytes"] + 300


def test_tls13_new_and_resumed_sessions(handshakes):
    events, _, _, _ = handshakes
    new, resumed = events[2]["tls"], events[3]["tls"]
    for tls in (new, resumed):
        assert (tls["version"], tls["version_protocol"]) == ("1.3", "tls")
        assert tls["cipher"] == "TLS_AES_128_GCM_SHA256"
        assert tls["curve"] == "x25519"  # the server's key share
        assert "next_protocol" not in tls  # sent encrypted in TLS 1.3
        assert set(tls["server"]) == {"ja3s"}  # so is the certificate
        assert tls["detailed"]["client_hello"]["extensions"]["supported_versions"] == ["TLS 1.3"]
        assert tls["detailed"]["server_hello"]["extensions"]["supported_versions"] == "TLS 1.3"
    assert new["resumed"] is False
    assert resumed["resumed"] is True
    assert resumed["detailed"]["resumption_method"] == "ticket"
    assert resumed["detailed"]["server_hello"]["extensions"]["pre_shared_key"] == {"selected_identity": 0}


def tshark(capture: Path, port: int, display_filter: str, *fields: str) -> list[list[str]]:
    done = subprocess.run(
        ["tshark", "-r", str(capture), "-d", f"tcp.port=={port},tls", "-Y", display_filter, "-T", "fields"]
        + [argument for field in fields for argument in ("-e", field)]
        + ["-E", "separator=|"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    return [line.split("|") for line in done.stdout.decode().splitlines()]


def grease(value: int) -> bool:
    return (value & 0x0F0F) == 0x0A0A and value >> 8 == value & 0xFF


def ja4_of(
    version: str, ciphers: str, extensions: str, algorithms: str, versions: str, alpn: str, sni: str
) -> str:
    """JA4 from tshark's dissection of a ClientHello, per FoxIO's specification."""

    def numbers(text: str) -> list[int]:
        return [value for value in (int(item, 0) for item in text.split(",") if item) if not grease(value)]

    cipher_list, extension_list, supported = numbers(ciphers), numbers(extensions), numbers(versions)
    highest = max(supported) if supported else int(version, 0)
    names = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10"}
    first_alpn = alpn.split(",")[0]
    head = f"t{names[highest]}{'d' if sni else 'i'}{len(cipher_list):02d}{len(extension_list):02d}"
    head += first_alpn[0] + first_alpn[-1] if first_alpn else "00"
    sorted_ciphers = ",".join(sorted(f"{value:04x}" for value in cipher_list))
    sorted_extensions = ",".join(sorted(f"{value:04x}" for value in extension_list if value not in (0, 16)))
    signature_algorithms = ",".join(f"{value:04x}" for value in numbers(algorithms))
    hashed = sorted_extensions + (f"_{signature_algorithms}" if signature_algorithms else "")
    return "_".join(
        (
            head,
            hashlib.sha256(sorted_ciphers.encode()).hexdigest()[:12],
            hashlib.sha256(hashed.encode()).hexdigest()[:12],
        )
    )


def test_fingerprints_agree_with_tshark(handshakes):
    if shutil.which("tshark") is None:
        pytest.skip("comparing fingerprints needs 'tshark' (Debian package tshark), which is not installed")
    events, capture, port, _ = handshakes
    hellos = tshark(
        capture,
        port,
        "tls.handshake.type == 1",
        "tls.handshake.ja3",
        "tls.handshake.ja3_full",
        "tls.handshake.version",
        "tls.handshake.ciphersuite",
        "tls.handshake.extension.type",
        "tls.handshake.sig_hash_alg",
        "tls.handshake.extensions.supported_version",
        "tls.handshake.extensions_alpn_str",
        "tls.handshake.extensions_server_name",
    )
    assert len(hellos) == 4
    for event, (ja3, ja3_full, *dissected) in zip(events, hellos, strict=True):
        assert event["tls"]["client"]["ja3"] == ja3
        assert event["tls"]["detailed"]["client_hello"]["ja3_string"] == ja3_full
        assert "50" not in dissected[2].split(",")  # sig_hash_alg would mix in signature_algorithms_cert
        assert event["tls"]["client"]["ja4"] == ja4_of(*dissected)
    servers = tshark(
        capture, port, "tls.handshake.type == 2", "tls.handshake.ja3s", "tls.handshake.ja3s_full"
    )
    assert [
        [event["tls"]["server"]["ja3s"], event["tls"]["detailed"]["server_hello"]["ja3s_string"]]
        for event in events
    ] == servers

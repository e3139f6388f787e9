"""The tls analyzer on crafted handshakes: records, hellos, certificates, fingerprints, edge cases."""

from __future__ import annotations

import hashlib
import ipaddress
import struct
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from analyzers import transactions
from captures import tcp_conversation
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from flowpipe import TO_CLIENT, TO_SERVER, StageContext, Struct
from flowpipe.metrics import Counters
from flowpipe.plugins.decoders.protocols.tls import TlsAnalyzer
from flowpipe.plugins.decoders.protocols.tls_fingerprints import ja3, ja3s, ja4
from flowpipe.plugins.decoders.protocols.tls_hello import (
    MalformedHelloError,
    parse_client_hello,
    parse_server_hello,
)

CLIENT = ("10.1.0.1", 50000)
SERVER = ("10.1.0.2", 443)
GREASE = 0x0A0A


# -- builders ---------------------------------------------------------------------------------------


def vec8(data: bytes) -> bytes:
    return bytes([len(data)]) + data


def vec16(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def u16s(*values: int) -> bytes:
    return b"".join(struct.pack("!H", value) for value in values)


def ext(code: int, data: bytes = b"") -> tuple[int, bytes]:
    return code, data


def sni(name: str) -> tuple[int, bytes]:
    return ext(0, vec16(b"\x00" + vec16(name.encode())))


def alpn(*protocols: bytes) -> tuple[int, bytes]:
    return ext(16, vec16(b"".join(vec8(protocol) for protocol in protocols)))


def groups(*values: int) -> tuple[int, bytes]:
    return ext(10, vec16(u16s(*values)))


def points(*values: int) -> tuple[int, bytes]:
    return ext(11, vec8(bytes(values)))


def sigalgs(*values: int) -> tuple[int, bytes]:
    return ext(13, vec16(u16s(*values)))


def client_versions(*values: int) -> tuple[int, bytes]:
    return ext(43, vec8(u16s(*values)))


def client_key_share(*values: int) -> tuple[int, bytes]:
    return ext(51, vec16(b"".join(u16s(group) + vec16(bytes(32)) for group in values)))


def handshake(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + len(body).to_bytes(3, "big") + body


def record(kind: int, body: bytes, version: int = 0x0303) -> bytes:
    return struct.pack("!BHH", kind, version, len(body)) + body


def extensions_block(extensions: list[tuple[int, bytes]] | None) -> bytes:
    if extensions is None:
        return b""
    return vec16(b"".join(u16s(code) + vec16(data) for code, data in extensions))


def client_hello(
    ciphers: list[int],
    extensions: list[tuple[int, bytes]] | None,
    version: int = 0x0303,
    session_id: bytes = b"",
    random: bytes = bytes(range(32)),
) -> bytes:
    """A ClientHello handshake message (header included)."""
    body = u16s(version) + random + vec8(session_id) + vec16(u16s(*ciphers)) + vec8(b"\x00")
    return handshake(1, body + extensions_block(extensions))


def server_hello(
    cipher: int,
    extensions: list[tuple[int, bytes]] | None,
    version: int = 0x0303,
    session_id: bytes = b"",
    random: bytes = bytes(range(100, 132)),
) -> bytes:
    body = u16s(version) + random + vec8(session_id) + u16s(cipher) + b"\x00"
    return handshake(2, body + extensions_block(extensions))


def certificate_message(*ders: bytes) -> bytes:
    entries = b"".join(len(der).to_bytes(3, "big") + der for der in ders)
    return handshake(11, len(entries).to_bytes(3, "big") + entries)


CCS = record(20, b"\x01")


def encrypted(size: int, kind: int = 23) -> bytes:
    return record(kind, bytes(range(256))[:size] if size <= 256 else bytes(size))


def make_certificate(common_name: str, issuer_name: str, sans: list[x509.GeneralName], serial: int) -> bytes:
    """A certificate with an Ed25519 key (deterministic signature: the same DER on every run)."""
    key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "NL"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "Noord-Holland"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Amsterdam"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Flowpipe Test"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "QA"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC))
        .not_valid_after(datetime(2034, 1, 2, 3, 4, 5, tzinfo=UTC))
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, None).public_bytes(serialization.Encoding.DER)


LEAF = make_certificate(
    "test.example",
    "Flowpipe Test CA",
    [
        x509.DNSName("test.example"),
        x509.DNSName("www.test.example"),
        x509.IPAddress(ipaddress.ip_address("192.0.2.1")),
    ],
    0x1234ABCD,
)
CA = make_certificate("Flowpipe Test CA", "Flowpipe Test CA", [], 7)

CLIENT_HELLO_12 = client_hello(
    [GREASE, 0xC02F, 0xC030, 0x1301, 0x009C, 0x00FF, 0x1234],
    [
        ext(0x1A1A),
        sni("test.example"),
        ext(23),
        ext(0xFF01, b"\x00"),
        groups(0x2A2A, 29, 23, 24),
        points(0),
        ext(35),
        alpn(b"h2", b"http/1.1"),
        sigalgs(0x0403, 0x0804, 0x0401),
        ext(5, b"\x01\x00\x00\x00\x00"),
    ],
)
SERVER_HELLO_12 = server_hello(
    0xC02F, [ext(0xFF01, b"\x00"), points(0), ext(35), alpn(b"h2")], session_id=b"\xab" * 32
)
SERVER_KEY_EXCHANGE = handshake(12, b"\x03\x00\x1d" + vec8(bytes(32)) + u16s(0x0804) + vec16(bytes(64)))
SERVER_HELLO_DONE = handshake(14, b"")
CLIENT_KEY_EXCHANGE = handshake(16, vec8(bytes(32)))

CLIENT_FLIGHT_12 = record(22, CLIENT_HELLO_12, version=0x0301)
SERVER_FLIGHT_12 = b"".join(
    record(22, message)
    for message in (SERVER_HELLO_12, certificate_message(LEAF, CA), SERVER_KEY_EXCHANGE, SERVER_HELLO_DONE)
)
CLIENT_FINISH_12 = record(22, CLIENT_KEY_EXCHANGE) + CCS + encrypted(40, kind=22)
SERVER_FINISH_12 = CCS + encrypted(40, kind=22)

JA3_12 = "771,49199-49200-4865-156-255-4660,0-23-65281-10-11-35-16-13-5,29-23-24,0"
JA4_12 = (
    "t12d0609h2_"
    + hashlib.sha256(b"009c,00ff,1234,1301,c02f,c030").hexdigest()[:12]
    + "_"
    + hashlib.sha256(b"0005,000a,000b,000d,0017,0023,ff01_0403,0804,0401").hexdigest()[:12]
)
JA3S_12 = "771,49199,65281-11-35-16"

LEAF_X509 = {
    "version_number": "3",
    "serial_number": "1234ABCD",
    "not_before": "2024-01-02T03:04:05.000Z",
    "not_after": "2034-01-02T03:04:05.000Z",
    "subject": {
        "distinguished_name": "CN=test.example,OU=QA,O=Flowpipe Test,L=Amsterdam,ST=Noord-Holland,C=NL",
        "common_name": ["test.example"],
        "country": ["NL"],
        "locality": ["Amsterdam"],
        "organization": ["Flowpipe Test"],
        "organizational_unit": ["QA"],
        "state_or_province": ["Noord-Holland"],
    },
    "issuer": {"distinguished_name": "CN=Flowpipe Test CA", "common_name": ["Flowpipe Test CA"]},
    "signature_algorithm": "Ed25519",
    "public_key_algorithm": "Ed25519",
    "public_key_size": 256,
    "alternative_names": ["test.example", "www.test.example", "192.0.2.1"],
}


def handshake_12(
    client: bytes = CLIENT_FLIGHT_12, server: bytes = SERVER_FLIGHT_12
) -> list[tuple[bool, bytes]]:
    return [
        (True, client),
        (False, server),
        (True, CLIENT_FINISH_12),
        (False, SERVER_FINISH_12),
        (True, encrypted(100)),
        (False, encrypted(200)),
    ]


class Flow:
    """The connection as the tcp decoder describes it (hashable: the transactions key by it)."""

    client_ip, client_port = CLIENT
    server_ip, server_port = SERVER
    protocol = 6
    network_type = "ipv4"
    community_id = "1:test"
    id = "flow"
    vlan = ()


class Events(list):
    """Published events, with the analyzer's counters as ``counters``."""

    counters: dict[str, int]


def run(exchanges: list[tuple[bool, bytes]], **options) -> Events:
    """Feed ``exchanges`` to a TlsAnalyzer in this process (1 ms apart), close, return its events."""
    counters = Counters("protocol", "decoder")
    analyzer = TlsAnalyzer(
        Struct(*TlsAnalyzer.all_options()).convert(options), StageContext("protocol.tls", counters)
    )
    analyzer.open()
    events = Events()
    analyzer.start(events.append)
    flow, state = Flow(), None
    for index, (from_client, data) in enumerate(exchanges):
        packet = SimpleNamespace(
            timestamp=1_700_000_000 + index / 1000, data=data, flow=flow, from_client=from_client
        )
        state = analyzer.parse(packet, flow, TO_SERVER if from_client else TO_CLIENT, state)
    analyzer.on_close(flow, state)
    events.counters = counters.values
    return events


def pipeline(tmp_path, exchanges, server=SERVER):
    """Run ``exchanges`` as a TCP connection through the whole pipeline (ip, tcp, protocol)."""
    return transactions(tmp_path, tcp_conversation(CLIENT, server, exchanges))


# -- fingerprints on published vectors --------------------------------------------------------------


def test_ja3_matches_the_salesforce_readme_vectors():
    hello = parse_client_hello(
        client_hello(
            [47, 53, 5, 10, 49161, 49162, 49171, 49172, 50, 56, 19, 4],
            [sni("example.com"), groups(23, 24, 25), points(0)],
            version=769,
        )[4:]
    )
    assert ja3(hello) == (
        "769,47-53-5-10-49161-49162-49171-49172-50-56-19-4,0-10-11,23-24-25,0",
        "ada70206e40642a3e4461f35503241d5",
    )
    bare = parse_client_hello(client_hello([4, 5, 10, 9, 100, 98, 3, 6, 19, 18, 99], None, version=769)[4:])
    assert ja3(bare) == ("769,4-5-10-9-100-98-3-6-19-18-99,,,", "de350869b8c85de67a350c8d186f11e6")


def test_ja3_ignores_grease_everywhere():
    hello = parse_client_hello(
        client_hello(
            [0xFAFA, 47, 53, 5, 10, 49161, 49162, 49171, 49172, 50, 56, 19, 4],
            [ext(0x3A3A), sni("example.com"), groups(0x4A4A, 23, 24, 25), points(0), ext(0xDADA, b"\x00")],
            version=769,
        )[4:]
    )
    assert ja3(hello)[1] == "ada70206e40642a3e4461f35503241d5"


def test_ja3s_of_the_salesforce_readme_server_hello():
    hello = parse_server_hello(
        server_hello(
            47, [ext(65281, b"\x00"), ext(0), ext(11, b"\x01\x00"), ext(35), ext(5), alpn(b"h2")], 769
        )[4:]
    )
    assert ja3s(hello) == ("769,47,65281-0-11-35-5-16", "836ce314215654b5b1f85f97c73e506f")


# FoxIO's JA4 specification example: 15 ciphers, 16 extensions, ALPN h2, eight signature algorithms.
FOXIO_CIPHERS = [0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC013, 0xC014]
FOXIO_CIPHERS += [0x009C, 0x009D, 0x002F, 0x0035]
FOXIO_SIGALGS = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601]


def foxio_hello(grease: bool = False, alpn_value: bytes | None = b"h2", with_sni: bool = True) -> bytes:
    extensions = [
        ext(0x001B, b"\x02\x00\x02"),
        sni("example.org") if with_sni else None,
        client_key_share(29),
        alpn(alpn_value) if alpn_value is not None else None,
        ext(0x4469, vec16(vec8(b"h2"))),
        ext(0x0017),
        ext(0x002D, b"\x01\x01"),
        sigalgs(*([0x1A1A] if grease else []), *FOXIO_SIGALGS),
        ext(0x0005, b"\x01\x00\x00\x00\x00"),
        ext(0x0023),
        ext(0x0012),
        client_versions(*([0x5A5A] if grease else []), 0x0304, 0x0303),
        ext(0xFF01, b"\x00"),
        points(0),
        groups(*([0x6A6A] if grease else []), 29, 23, 24),
        ext(0x0015, bytes(20)),
    ]
    if grease:
        extensions = [ext(0x0A0A), *extensions, ext(0xEAEA, b"\x00")]
    ciphers = [0x2A2A, *FOXIO_CIPHERS] if grease else FOXIO_CIPHERS
    return client_hello(ciphers, [item for item in extensions if item is not None])


def test_ja4_matches_the_foxio_specification_example():
    assert ja4(parse_client_hello(foxio_hello()[4:])) == "t13d1516h2_8daaf6152771_e5627efa2ab1"


def test_ja4_ignores_grease_in_ciphers_extensions_versions_and_signature_algorithms():
    assert ja4(parse_client_hello(foxio_hello(grease=True)[4:])) == "t13d1516h2_8daaf6152771_e5627efa2ab1"


def test_ja4_without_sni_counts_one_extension_less_and_says_i():
    assert ja4(parse_client_hello(foxio_hello(with_sni=False)[4:])) == "t13i1515h2_8daaf6152771_e5627efa2ab1"


@pytest.mark.parametrize(
    ("value", "chars"),
    [
        (b"http/1.1", "h1"),
        (b"h", "hh"),
        (b"\xab", "ab"),
        (b"\xab\xcd", "ad"),
        (b"\x30\xab", "3b"),
        (b"\x30\x31\xab\xcd", "3d"),
        (b"\x30\xab\xcd\x31", "01"),
    ],
)
def test_ja4_alpn_characters_follow_the_specification(value, chars):
    assert ja4(parse_client_hello(foxio_hello(alpn_value=value)[4:]))[8:10] == chars


def test_ja4_without_alpn_and_without_ciphers_or_extensions():
    assert ja4(parse_client_hello(foxio_hello(alpn_value=None)[4:])) == "t13d151500_8daaf6152771_e5627efa2ab1"
    assert (
        ja4(parse_client_hello(client_hello([], None, version=0x0301)[4:]))
        == "t10i000000_000000000000_000000000000"
    )


# -- hello parsing -----------------------------------------------------------------------------------


def test_malformed_hellos_raise():
    good = client_hello([0xC02F], [sni("a.example")])[4:]
    for broken in (
        good[:20],  # cut in the random
        good[:-3],  # the extensions block runs past the end
        good + b"\x00",  # bytes after the extensions
        b"\x02\x00" + good[2:],  # not version 3.x
        good[:34] + b"\x21" + bytes(33) + good[35:],  # session id over 32 bytes
    ):
        with pytest.raises(MalformedHelloError):
            parse_client_hello(broken)


def test_a_malformed_known_extension_is_listed_as_unparsed():
    hello = parse_client_hello(client_hello([0xC02F], [ext(0, b"\x00\x09\x00\x00\x05ab"), alpn(b"h2")])[4:])
    assert hello.server_names == []
    assert hello.unparsed == [0]
    assert hello.alpn == [b"h2"]


# -- whole handshakes through the pipeline -------------------------------------------------------------


def expected_12() -> dict:
    return {
        "version": "1.2",
        "version_protocol": "tls",
        "cipher": "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        "curve": "x25519",
        "next_protocol": "h2",
        "established": True,
        "resumed": False,
        "client": {
            "server_name": "test.example",
            "supported_ciphers": [
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
                "TLS_AES_128_GCM_SHA256",
                "TLS_RSA_WITH_AES_128_GCM_SHA256",
                "TLS_EMPTY_RENEGOTIATION_INFO_SCSV",
                "(unknown:0x1234)",
            ],
            "ja3": hashlib.md5(JA3_12.encode()).hexdigest(),
            "ja4": JA4_12,
        },
        "server": {
            "ja3s": hashlib.md5(JA3S_12.encode()).hexdigest(),
            "subject": "CN=test.example,OU=QA,O=Flowpipe Test,L=Amsterdam,ST=Noord-Holland,C=NL",
            "issuer": "CN=Flowpipe Test CA",
            "not_before": "2024-01-02T03:04:05.000Z",
            "not_after": "2034-01-02T03:04:05.000Z",
            "x509": LEAF_X509,
            "hash": {"sha1": hashlib.sha1(LEAF).hexdigest().upper()},
        },
        "detailed": {
            "version": "TLS 1.2",
            "server_certificate": {
                "version": 3,
                "serial_number": str(0x1234ABCD),
                "not_before": "2024-01-02T03:04:05.000Z",
                "not_after": "2034-01-02T03:04:05.000Z",
                "subject": {
                    "common_name": "test.example",
                    "country": "NL",
                    "locality": "Amsterdam",
                    "organization": "Flowpipe Test",
                    "organizational_unit": "QA",
                    "province": "Noord-Holland",
                },
                "issuer": {"common_name": "Flowpipe Test CA"},
                "signature_algorithm": "Ed25519",
                "public_key_algorithm": "Ed25519",
                "public_key_size": 256,
                "alternative_names": ["test.example", "www.test.example", "192.0.2.1"],
            },
            "server_certificate_chain": [
                {
                    "version": 3,
                    "serial_number": "7",
                    "not_before": "2024-01-02T03:04:05.000Z",
                    "not_after": "2034-01-02T03:04:05.000Z",
                    "subject": {
                        "common_name": "Flowpipe Test CA",
                        "country": "NL",
                        "locality": "Amsterdam",
                        "organization": "Flowpipe Test",
                        "organizational_unit": "QA",
                        "province": "Noord-Holland",
                    },
                    "issuer": {"common_name": "Flowpipe Test CA"},
                    "signature_algorithm": "Ed25519",
                    "public_key_algorithm": "Ed25519",
                    "public_key_size": 256,
                }
            ],
            "client_certificate_requested": False,
            "client_hello": {
                "version": "3.3",
                "random": bytes(range(32)).hex(),
                "supported_compression_methods": ["NULL"],
                "extensions": {
                    "server_name_indication": ["test.example"],
                    "application_layer_protocol_negotiation": ["h2", "http/1.1"],
                    "session_ticket": "",
                    "supported_groups": ["x25519", "secp256r1", "secp384r1"],
                    "signature_algorithms": [
                        "ecdsa_secp256r1_sha256",
                        "rsa_pss_rsae_sha256",
                        "rsa_pkcs1_sha256",
                    ],
                    "ec_points_formats": ["uncompressed"],
                    "status_request": {"type": "ocsp"},
                    "_unparsed_": ["extended_master_secret", "renegotiation_info"],
                },
                "ja3_string": JA3_12,
            },
            "server_hello": {
                "version": "3.3",
                "random": bytes(range(100, 132)).hex(),
                "session_id": "ab" * 32,
                "selected_compression_method": "NULL",
                "extensions": {
                    "application_layer_protocol_negotiation": ["h2"],
                    "session_ticket": "",
                    "ec_points_formats": ["uncompressed"],
                    "_unparsed_": ["renegotiation_info"],
                },
                "selected_cipher": "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                "ja3s_string": JA3S_12,
            },
        },
    }


def test_tls12_full_handshake_through_the_pipeline(tmp_path):
    events = pipeline(tmp_path, handshake_12())
    assert len(events) == 1
    event = events[0]
    assert event["tls"] == expected_12()
    assert event["status"] == "OK"
    assert "notes" not in event
    assert event["destination"]["domain"] == event["server"]["domain"] == "test.example"
    assert (event["client"]["ip"], event["client"]["port"]) == CLIENT
    assert event["client"]["bytes"] == len(CLIENT_FLIGHT_12) + len(CLIENT_FINISH_12)
    assert event["server"]["bytes"] == len(SERVER_FLIGHT_12) + len(SERVER_FINISH_12)
    assert event["event"]["duration"] == 1_000_000  # ClientHello to ServerHello: one step of 1 ms
    assert event["event"]["category"] == ["network"]
    # after the handshake the application data is only counted
    assert events.counters["tls.skipped_bytes"] == len(encrypted(100)) + len(encrypted(200))
    assert events.counters["tls.transactions"] == 1


def test_records_split_at_every_byte_offset_give_the_same_event():
    expected = run(handshake_12())[0]
    for offset in range(1, max(len(CLIENT_FLIGHT_12), len(SERVER_FLIGHT_12))):
        client_cut, server_cut = (
            min(offset, len(CLIENT_FLIGHT_12) - 1),
            min(offset, len(SERVER_FLIGHT_12) - 1),
        )
        exchanges = [
            (True, CLIENT_FLIGHT_12[:client_cut]),
            (True, CLIENT_FLIGHT_12[client_cut:]),
            (False, SERVER_FLIGHT_12[:server_cut]),
            (False, SERVER_FLIGHT_12[server_cut:]),
            *handshake_12()[2:],
        ]
        events = run(exchanges)
        assert [event["tls"] for event in events] == [expected["tls"]], offset
        assert events[0]["event"]["start"] == expected["event"]["start"]
        assert events.counters.get("dropped.tls.malformed_record") is None


def test_every_record_in_its_own_one_byte_segments():
    exchanges = [
        (from_client, data[index : index + 1])
        for from_client, data in handshake_12()
        for index in range(len(data))
    ]
    assert [event["tls"] for event in run(exchanges)] == [expected_12()]


def test_a_hello_spanning_two_records_and_many_records_in_one_segment():
    fragmented = record(22, CLIENT_HELLO_12[:50], version=0x0301) + record(
        22, CLIENT_HELLO_12[50:], version=0x0301
    )
    events = run(handshake_12(client=fragmented))
    assert events[0]["tls"] == expected_12()
    # the whole server flight in one record: several handshake messages per record
    messages = SERVER_HELLO_12 + certificate_message(LEAF, CA) + SERVER_KEY_EXCHANGE + SERVER_HELLO_DONE
    events = run(handshake_12(server=record(22, messages)))
    assert events[0]["tls"] == expected_12()


def tls13_exchanges(server_extensions, client_extras=(), hello_retry=False):
    hello = client_hello(
        [0x1301, 0x1302, 0x1303],
        [
            sni("tls13.example"),
            client_versions(0x0304, 0x0303),
            client_key_share(29),
            alpn(b"h2"),
            *client_extras,
        ],
    )
    exchanges = [(True, record(22, hello, version=0x0301))]
    if hello_retry:
        retry = server_hello(
            0x1301,
            [ext(43, u16s(0x0304)), ext(51, u16s(23))],
            random=bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c"),
        )
        exchanges += [(False, record(22, retry) + CCS), (True, CCS + record(22, hello))]
    final = server_hello(0x1302, server_extensions)
    exchanges += [
        (False, record(22, final) + CCS + encrypted(30) + encrypted(200) + encrypted(90)),
        (True, encrypted(53) if hello_retry else CCS + encrypted(53)),  # after a retry, CCS was sent already
        (False, encrypted(120)),
    ]
    return exchanges


def test_tls13_handshake():
    events = run(tls13_exchanges([ext(43, u16s(0x0304)), ext(51, u16s(29) + vec16(bytes(32)))]))
    assert len(events) == 1
    tls = events[0]["tls"]
    assert events[0]["status"] == "OK"
    assert {
        key: tls[key] for key in ("version", "version_protocol", "cipher", "curve", "established", "resumed")
    } == {
        "version": "1.3",
        "version_protocol": "tls",
        "cipher": "TLS_AES_256_GCM_SHA384",
        "curve": "x25519",
        "established": True,
        "resumed": False,
    }
    assert "next_protocol" not in tls  # TLS 1.3 sends the ALPN choice encrypted
    assert tls["client"]["server_name"] == "tls13.example"
    assert tls["client"]["ja4"] == "t13d0304h2_{}_{}".format(
        hashlib.sha256(b"1301,1302,1303").hexdigest()[:12], hashlib.sha256(b"002b,0033").hexdigest()[:12]
    )
    assert set(tls["server"]) == {"ja3s"}  # certificates are encrypted
    assert tls["detailed"]["server_hello"]["extensions"] == {
        "supported_versions": "TLS 1.3",
        "key_share": "x25519",
    }
    assert tls["detailed"]["client_hello"]["extensions"]["supported_versions"] == ["TLS 1.3", "TLS 1.2"]
    assert tls["detailed"]["client_hello"]["extensions"]["key_share"] == ["x25519"]


def test_tls13_resumption_with_a_pre_shared_key():
    psk = ext(41, vec16(vec16(b"ticket-identity") + b"\x00\x00\x00\x01") + vec16(vec8(bytes(32))))
    server_extensions = [ext(43, u16s(0x0304)), ext(51, u16s(29) + vec16(bytes(32))), ext(41, u16s(0))]
    events = run(tls13_exchanges(server_extensions, client_extras=[ext(45, b"\x01\x01"), psk]))
    tls = events[0]["tls"]
    assert (tls["resumed"], tls["established"], tls["detailed"]["resumption_method"]) == (
        True,
        True,
        "ticket",
    )
    assert tls["detailed"]["client_hello"]["extensions"]["pre_shared_key"] == {"identities": 1}
    assert tls["detailed"]["server_hello"]["extensions"]["pre_shared_key"] == {"selected_identity": 0}


def test_tls13_hello_retry_request():
    server_extensions = [ext(43, u16s(0x0304)), ext(51, u16s(23) + vec16(bytes(65)))]
    events = run(tls13_exchanges(server_extensions, hello_retry=True))
    assert len(events) == 1
    tls = events[0]["tls"]
    assert (tls["version"], tls["curve"], tls["established"]) == ("1.3", "secp256r1", True)
    assert tls["detailed"]["hello_retry_request"] is True
    assert tls["detailed"]["server_hello"]["random"] == bytes(range(100, 132)).hex()


def test_tls12_resumption_by_session_id():
    session = bytes(range(1, 33))
    hello = client_hello([0xC02F], [sni("test.example")], session_id=session)
    exchanges = [
        (True, record(22, hello)),
        (False, record(22, server_hello(0xC02F, [], session_id=session)) + SERVER_FINISH_12),
        (True, CCS + encrypted(40, kind=22)),
    ]
    tls = run(exchanges)[0]["tls"]
    assert (tls["resumed"], tls["established"], tls["detailed"]["resumption_method"]) == (True, True, "id")
    assert "server_certificate" not in tls["detailed"]


def test_a_fatal_alert_instead_of_a_server_hello():
    exchanges = [(True, CLIENT_FLIGHT_12), (False, record(21, b"\x02\x28"))]
    events = run(exchanges)
    assert len(events) == 1
    event = events[0]
    assert event["status"] == "Error"
    assert event["notes"] == ["no ServerHello: the handshake ended with an alert"]
    assert event["tls"]["established"] is False
    assert event["tls"]["detailed"]["alert_types"] == ["handshake_failure"]
    assert event["tls"]["detailed"]["alerts"] == [
        {"source": "server", "severity": "fatal", "code": 40, "type": "handshake_failure"}
    ]
    assert "version" not in event["tls"]


def test_a_client_alert_after_the_server_flight():
    exchanges = [(True, CLIENT_FLIGHT_12), (False, SERVER_FLIGHT_12), (True, record(21, b"\x02\x30"))]
    event = run(exchanges)[0]
    assert event["status"] == "Error"
    assert "notes" not in event
    assert (event["tls"]["version"], event["tls"]["established"]) == ("1.2", False)
    assert event["tls"]["detailed"]["alert_types"] == ["unknown_ca"]
    assert event["tls"]["detailed"]["alerts"][0]["source"] == "client"


def test_no_server_hello_before_the_connection_closes():
    event = run([(True, CLIENT_FLIGHT_12)])[0]
    assert event["status"] == "Error"
    assert event["notes"] == ["no response before the connection closed"]
    assert event["tls"]["client"]["server_name"] == "test.example"
    assert event["tls"]["established"] is False


def test_a_handshake_cut_short_is_published_as_not_completed():
    event = run([(True, CLIENT_FLIGHT_12), (False, SERVER_FLIGHT_12[:300])])[0]
    assert event["status"] == "Error"
    assert event["notes"] == ["the handshake was not completed"]
    assert event["tls"]["cipher"] == "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
    assert "x509" not in event["tls"]["server"]  # the Certificate message never completed


def test_bytes_that_are_not_tls_records():
    events = run([(True, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), (False, b"HTTP/1.1 400 Bad\r\n\r\n")])
    assert events == []
    assert events.counters["dropped.tls.malformed_record"] == 1
    assert events.counters["tls.skipped_bytes"] == len(b"HTTP/1.1 400 Bad\r\n\r\n")
    oversized = struct.pack("!BHH", 22, 0x0303, (1 << 14) + 2049)
    events = run([(True, CLIENT_FLIGHT_12), (False, oversized + bytes(100))])
    assert events[0]["notes"] == [
        "not a TLS record (record type 22, version 3.3, length 18433): the rest of the connection is skipped",
        "no response before the connection closed",
    ]


def test_a_malformed_client_hello_is_counted_and_its_server_hello_published_alone():
    broken = record(22, handshake(1, CLIENT_HELLO_12[4:-3]))  # the extensions run past the message
    events = run(handshake_12(client=broken))
    assert events.counters["dropped.tls.malformed_hello"] == 1
    assert len(events) == 1
    event = events[0]
    assert event["notes"][0].startswith("malformed ClientHello: needs ")
    assert event["notes"][1:] == ["response without a request"]
    assert "client" not in event["tls"]
    assert event["tls"]["established"] is True


def test_a_handshake_message_over_max_message_size_is_skipped_with_a_note():
    events = run(handshake_12(), max_message_size="512B")
    event = events[0]
    assert event["notes"] == ["message truncated at max_message_size (512 bytes)"]
    assert events.counters["dropped.tls.truncated"] == 1
    assert event["tls"]["established"] is True
    assert "x509" not in event["tls"]["server"]
    assert event["tls"]["cipher"] == "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"


def test_a_gap_ends_the_parsing_with_a_note(tmp_path):
    frames = tcp_conversation(CLIENT, SERVER, handshake_12())
    del frames[4]  # the server flight: the client's next segment acknowledges it
    events = transactions(tmp_path, frames)
    assert len(events) == 1
    assert events[0]["notes"] == [
        f"{len(SERVER_FLIGHT_12)} bytes of the stream were lost",
        "no response before the connection closed",
    ]


def test_a_malformed_certificate_is_counted_and_left_out():
    server = b"".join(
        record(22, message)
        for message in (SERVER_HELLO_12, certificate_message(b"\x30\x03\x02\x01\x01"), SERVER_KEY_EXCHANGE)
    )
    events = run(handshake_12(server=server))
    assert events.counters["dropped.tls.malformed_certificate"] == 1
    assert "x509" not in events[0]["tls"]["server"]
    assert events[0]["status"] == "OK"


def test_certificate_options():
    tls = run(
        handshake_12(),
        include_raw_certificates=True,
        include_detailed_fields=False,
        fingerprints=["sha256", "md5"],
    )[0]["tls"]
    assert "detailed" not in tls
    assert tls["server"]["hash"] == {
        "sha256": hashlib.sha256(LEAF).hexdigest().upper(),
        "md5": hashlib.md5(LEAF).hexdigest().upper(),
    }
    pem_chain = [
        x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode()
        for der in (LEAF, CA)
    ]
    assert tls["server"]["certificate_chain"] == pem_chain
    tls = run(handshake_12(), send_certificates=False)[0]["tls"]
    assert set(tls["server"]) == {"ja3s"}
    assert "server_certificate" not in tls["detailed"]


def test_client_certificate_and_certificate_request():
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client.example")])
    client_certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(5)
        .not_valid_before(datetime(2024, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2025, 1, 1, tzinfo=UTC))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    server = SERVER_FLIGHT_12[: -len(record(22, SERVER_HELLO_DONE))] + record(
        22, handshake(13, b"\x01\x01\x00\x02\x04\x03\x00\x00")
    )
    server += record(22, SERVER_HELLO_DONE)
    finish = record(22, certificate_message(client_certificate)) + CLIENT_FINISH_12
    exchanges = [(True, CLIENT_FLIGHT_12), (False, server), (True, finish), (False, SERVER_FINISH_12)]
    tls = run(exchanges)[0]["tls"]
    assert tls["detailed"]["client_certificate_requested"] is True
    assert tls["client"]["subject"] == "CN=client.example"
    assert tls["client"]["x509"]["public_key_algorithm"] == "ECDSA"
    assert tls["client"]["x509"]["public_key_curve"] == "secp256r1"
    assert tls["client"]["x509"]["signature_algorithm"] == "ECDSA-SHA256"
    assert tls["client"]["hash"] == {"sha1": hashlib.sha1(client_certificate).hexdigest().upper()}
    assert tls["detailed"]["client_certificate"]["subject"] == {"common_name": "client.example"}
    assert tls["server"]["subject"].startswith("CN=test.example,")


# -- content detection -------------------------------------------------------------------------------


def test_detect():
    assert TlsAnalyzer.detect(CLIENT_FLIGHT_12, True) is True
    assert TlsAnalyzer.detect(CLIENT_FLIGHT_12[:3], True) is None
    assert TlsAnalyzer.detect(CLIENT_FLIGHT_12[:8], True) is None
    assert TlsAnalyzer.detect(b"", True) is None
    assert TlsAnalyzer.detect(CLIENT_FLIGHT_12, False) is False
    assert TlsAnalyzer.detect(b"GET / HTTP/1.1\r\n", True) is False
    assert TlsAnalyzer.detect(b"\x16\x03\x01\x00\x00\x01", True) is False  # empty record
    assert TlsAnalyzer.detect(record(22, SERVER_HELLO_12), True) is False
    assert TlsAnalyzer.detect(b"\x16\x03\x07", True) is False


def test_content_detection_claims_tls_on_an_unlisted_port(tmp_path):
    events = pipeline(tmp_path, handshake_12(), server=("10.1.0.2", 4433))
    assert len(events) == 1
    assert events[0]["tls"] == expected_12()
    assert events.counters["streams.detected"] == 1


def test_a_connection_opened_from_the_tls_port(tmp_path):
    # The SYN comes from port 443: the flow's client is the TLS server, found by its listed port.
    exchanges = [(not from_client, data) for from_client, data in handshake_12()]
    events = transactions(tmp_path, tcp_conversation(SERVER, CLIENT, exchanges))
    assert len(events) == 1
    event = events[0]
    assert (event["client"]["ip"], event["client"]["port"]) == CLIENT
    assert (event["server"]["ip"], event["server"]["port"]) == SERVER
    assert event["client"]["bytes"] == len(CLIENT_FLIGHT_12) + len(CLIENT_FINISH_12)
    assert event["tls"] == expected_12()

"""TLS client and server fingerprints: JA3 and JA3S (Salesforce), JA4 (FoxIO).

- JA3: MD5 of ``version,ciphers,extensions,groups,point_formats`` of a ClientHello, each list
  in wire order, values in decimal joined by ``-``, GREASE values left out.
- JA3S: MD5 of ``version,cipher,extensions`` of a ServerHello.
- JA4 (FoxIO's JA4 specification): ``t`` (TLS over TCP), the highest version offered
  (supported_versions, else the legacy version) as two characters, ``d``/``i`` for SNI
  present/absent, two-digit counts of ciphers and extensions, the first and last characters of
  the first ALPN value, then ``_`` and the first 12 hex digits of the SHA-256 of the sorted
  cipher list, then ``_`` and those of the sorted extension list (without SNI and ALPN)
  followed by ``_`` and the signature algorithms in wire order. GREASE is ignored everywhere.
"""

from __future__ import annotations

import hashlib

from .tls_hello import EXT_ALPN, EXT_SERVER_NAME, GREASE, Hello

__all__ = ["ja3", "ja3s", "ja4"]

JA4_VERSIONS = {
    0x0304: "13",
    0x0303: "12",
    0x0302: "11",
    0x0301: "10",
    0x0300: "s3",
    0x0002: "s2",
    0xFEFF: "d1",
    0xFEFD: "d2",
    0xFEFC: "d3",
}
EMPTY_HASH = "000000000000"


def _decimal(values: list[int]) -> str:
    return "-".join([str(value) for value in values if value not in GREASE])


def ja3(hello: Hello) -> tuple[str, str]:
    """JA3 of a ClientHello: ``(string, md5 hex)``."""
    text = ",".join(
        (
            str(hello.version),
            _decimal(hello.ciphers),
            _decimal(hello.extensions),
            _decimal(hello.groups),
            _decimal(hello.point_formats),
        )
    )
    return text, hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def ja3s(hello: Hello) -> tuple[str, str]:
    """JA3S of a ServerHello: ``(string, md5 hex)``."""
    text = f"{hello.version},{hello.ciphers[0]},{_decimal(hello.extensions)}"
    return text, hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _sha12(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _alpn_chars(hello: Hello) -> str:
    if not hello.alpn or not hello.alpn[0]:
        return "00"
    value = hello.alpn[0]
    first, last = value[0], value[-1]
    if chr(first).isascii() and chr(first).isalnum() and chr(last).isascii() and chr(last).isalnum():
        return chr(first) + chr(last)
    hexed = value.hex()
    return hexed[0] + hexed[-1]


def ja4(hello: Hello, transport: str = "t") -> str:
    """JA4 of a ClientHello (``transport``: ``t`` TLS over TCP, ``q`` QUIC, ``d`` DTLS)."""
    ciphers = [value for value in hello.ciphers if value not in GREASE]
    extensions = [value for value in hello.extensions if value not in GREASE]
    versions = [value for value in hello.supported_versions if value not in GREASE]
    version = JA4_VERSIONS.get(max(versions) if versions else hello.version, "00")
    sni = "d" if EXT_SERVER_NAME in extensions else "i"
    head = f"{transport}{version}{sni}{min(len(ciphers), 99):02d}{min(len(extensions), 99):02d}"
    cipher_hash = _sha12(",".join(sorted([f"{value:04x}" for value in ciphers]))) if ciphers else EMPTY_HASH
    hashed = sorted([f"{value:04x}" for value in extensions if value not in (EXT_SERVER_NAME, EXT_ALPN)])
    if hashed:
        text = ",".join(hashed)
        algorithms = [f"{value:04x}" for value in hello.signature_algorithms if value not in GREASE]
        if algorithms:
            text += "_" + ",".join(algorithms)
        extension_hash = _sha12(text)
    else:
        extension_hash = EMPTY_HASH
    return f"{head}{_alpn_chars(hello)}_{cipher_hash}_{extension_hash}"

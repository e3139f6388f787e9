"""X.509 certificates seen in TLS handshakes, described for events (with the ``cryptography`` package).

:func:`parse_certificate` turns one DER certificate into a :class:`CertificateInfo`: the
RFC 4514 subject and issuer strings and the validity, from which it builds ECS's ``x509``
block and Packetbeat's detailed certificate block. A certificate ``cryptography`` cannot load
gives None; parts it cannot decode (an unsupported key type, a malformed extension) are left
out.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from cryptography import x509 as crypto_x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID, PublicKeyAlgorithmOID, SignatureAlgorithmOID

__all__ = ["CertificateInfo", "fingerprints", "parse_certificate", "pem"]

_NAME_FIELDS = (
    (NameOID.COMMON_NAME, "common_name", "common_name"),
    (NameOID.COUNTRY_NAME, "country", "country"),
    (NameOID.LOCALITY_NAME, "locality", "locality"),
    (NameOID.ORGANIZATION_NAME, "organization", "organization"),
    (NameOID.ORGANIZATIONAL_UNIT_NAME, "organizational_unit", "organizational_unit"),
    (NameOID.STATE_OR_PROVINCE_NAME, "state_or_province", "province"),
)
"""(attribute, ECS x509 name field, Packetbeat detailed name field)."""
_NAME_INDEX = {oid: index for index, (oid, _, _) in enumerate(_NAME_FIELDS)}
CACHE_SIZE = 1024

_SIGNATURES = {
    SignatureAlgorithmOID.RSA_WITH_MD5: "MD5-RSA",
    SignatureAlgorithmOID.RSA_WITH_SHA1: "SHA1-RSA",
    SignatureAlgorithmOID.RSA_WITH_SHA224: "SHA224-RSA",
    SignatureAlgorithmOID.RSA_WITH_SHA256: "SHA256-RSA",
    SignatureAlgorithmOID.RSA_WITH_SHA384: "SHA384-RSA",
    SignatureAlgorithmOID.RSA_WITH_SHA512: "SHA512-RSA",
    SignatureAlgorithmOID.ECDSA_WITH_SHA1: "ECDSA-SHA1",
    SignatureAlgorithmOID.ECDSA_WITH_SHA224: "ECDSA-SHA224",
    SignatureAlgorithmOID.ECDSA_WITH_SHA256: "ECDSA-SHA256",
    SignatureAlgorithmOID.ECDSA_WITH_SHA384: "ECDSA-SHA384",
    SignatureAlgorithmOID.ECDSA_WITH_SHA512: "ECDSA-SHA512",
    SignatureAlgorithmOID.DSA_WITH_SHA1: "DSA-SHA1",
    SignatureAlgorithmOID.DSA_WITH_SHA256: "DSA-SHA256",
    SignatureAlgorithmOID.ED25519: "Ed25519",
    SignatureAlgorithmOID.ED448: "Ed448",
}
"""Signature algorithms as Go (and so Packetbeat) names them."""

_KEY_ALGORITHMS = {
    PublicKeyAlgorithmOID.RSAES_PKCS1_v1_5: "RSA",
    PublicKeyAlgorithmOID.RSASSA_PSS: "RSA",
    PublicKeyAlgorithmOID.EC_PUBLIC_KEY: "ECDSA",
    PublicKeyAlgorithmOID.DSA: "DSA",
    PublicKeyAlgorithmOID.ED25519: "Ed25519",
    PublicKeyAlgorithmOID.ED448: "Ed448",
}

_BROKEN = (ValueError, UnsupportedAlgorithm, crypto_x509.InvalidVersion)
"""What ``cryptography`` raises for certificates or parts of them it cannot decode."""


@dataclass(slots=True, frozen=True)
class CertificateInfo:
    """One certificate, described for events (immutable: descriptions are cached and shared)."""

    subject: str
    """RFC 4514 distinguished name (``CN=example.org,O=Example,C=US``)."""
    issuer: str
    not_before: str
    not_after: str
    version: int
    serial: int
    signature_algorithm: str
    key_algorithm: str | None
    key: tuple[tuple[str, Any], ...]
    """ECS ``public_key_*`` fields: (suffix, value)."""
    subject_names: tuple[tuple[int, tuple[str, ...]], ...]
    """(index in the name fields table, values) of the subject's attributes."""
    issuer_names: tuple[tuple[int, tuple[str, ...]], ...]
    alternative_names: tuple[str, ...]

    def x509(self) -> dict[str, Any]:
        """ECS's ``tls.server.x509`` / ``tls.client.x509`` fields."""
        fields: dict[str, Any] = {
            "version_number": str(self.version),
            "serial_number": f"{self.serial:X}",
            "not_before": self.not_before,
            "not_after": self.not_after,
            "subject": _ecs_name(self.subject, self.subject_names),
            "issuer": _ecs_name(self.issuer, self.issuer_names),
            "signature_algorithm": self.signature_algorithm,
        }
        if self.key_algorithm is not None:
            fields["public_key_algorithm"] = self.key_algorithm
        for suffix, value in self.key:
            fields[f"public_key_{suffix}"] = value
        if self.alternative_names:
            fields["alternative_names"] = list(self.alternative_names)
        return fields

    def detailed(self) -> dict[str, Any]:
        """Packetbeat's ``tls.detailed.server_certificate`` shape."""
        fields: dict[str, Any] = {
            "version": self.version,
            "serial_number": str(self.serial),
            "not_before": self.not_before,
            "not_after": self.not_after,
            "subject": {_NAME_FIELDS[index][2]: values[0] for index, values in self.subject_names},
            "issuer": {_NAME_FIELDS[index][2]: values[0] for index, values in self.issuer_names},
            "signature_algorithm": self.signature_algorithm,
        }
        if self.key_algorithm is not None:
            fields["public_key_algorithm"] = self.key_algorithm
        for suffix, value in self.key:
            if suffix == "size":
                fields["public_key_size"] = value
        if self.alternative_names:
            fields["alternative_names"] = list(self.alternative_names)
        return fields


@lru_cache(maxsize=CACHE_SIZE)
def parse_certificate(der: bytes) -> CertificateInfo | None:
    """Describe the DER certificate ``der``; None when it cannot be loaded.

    Servers send the same certificates over and over: the last ``CACHE_SIZE`` are remembered.
    """
    try:
        certificate = crypto_x509.load_der_x509_certificate(der)
        subject, issuer = certificate.subject, certificate.issuer
        return CertificateInfo(
            subject=subject.rfc4514_string(),
            issuer=issuer.rfc4514_string(),
            not_before=_time(certificate.not_valid_before_utc),
            not_after=_time(certificate.not_valid_after_utc),
            version=certificate.version.value + 1,
            serial=certificate.serial_number,
            signature_algorithm=_signature_algorithm(certificate),
            key_algorithm=_KEY_ALGORITHMS.get(certificate.public_key_algorithm_oid),
            key=_key_details(certificate),
            subject_names=_names(subject),
            issuer_names=_names(issuer),
            alternative_names=_alternative_names(certificate),
        )
    except _BROKEN:
        return None


def fingerprints(der: bytes, algorithms: list[str]) -> dict[str, str]:
    """Hashes of the DER certificate by algorithm name (``sha1``, ``sha256``, ``md5``), upper-case hex."""
    return {name: hashlib.new(name, der, usedforsecurity=False).hexdigest().upper() for name in algorithms}


def pem(der: bytes) -> str:
    """The DER certificate in PEM form."""
    body = base64.encodebytes(der).decode().replace("\n", "")
    lines = [body[index : index + 64] for index in range(0, len(body), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


def _time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _names(name: crypto_x509.Name) -> tuple[tuple[int, tuple[str, ...]], ...]:
    found: dict[int, list[str]] = {}
    for attribute in name:
        index = _NAME_INDEX.get(attribute.oid)
        if index is not None:
            found.setdefault(index, []).append(str(attribute.value))
    return tuple((index, tuple(found[index])) for index in sorted(found))


def _ecs_name(text: str, names: tuple[tuple[int, tuple[str, ...]], ...]) -> dict[str, Any]:
    fields: dict[str, Any] = {"distinguished_name": text}
    for index, values in names:
        fields[_NAME_FIELDS[index][1]] = list(values)
    return fields


def _signature_algorithm(certificate: crypto_x509.Certificate) -> str:
    oid = certificate.signature_algorithm_oid
    name = _SIGNATURES.get(oid)
    if name is not None:
        return name
    if oid == SignatureAlgorithmOID.RSASSA_PSS:
        try:
            hash_algorithm = certificate.signature_hash_algorithm
        except _BROKEN:
            hash_algorithm = None
        if hash_algorithm is not None:
            return f"{hash_algorithm.name.upper().replace('-', '')}-RSAPSS"
    return oid.dotted_string


def _key_details(certificate: crypto_x509.Certificate) -> tuple[tuple[str, Any], ...]:
    try:
        key = certificate.public_key()
    except _BROKEN:
        return ()
    if isinstance(key, rsa.RSAPublicKey):
        return (("size", key.key_size), ("exponent", key.public_numbers().e))
    if isinstance(key, ec.EllipticCurvePublicKey):
        return (("size", key.curve.key_size), ("curve", key.curve.name))
    if isinstance(key, dsa.DSAPublicKey):
        return (("size", key.key_size),)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return (("size", 256),)
    if isinstance(key, ed448.Ed448PublicKey):
        return (("size", 456),)
    return ()


def _alternative_names(certificate: crypto_x509.Certificate) -> tuple[str, ...]:
    try:
        extension = certificate.extensions.get_extension_for_class(crypto_x509.SubjectAlternativeName)
    except (crypto_x509.ExtensionNotFound, *_BROKEN):
        return ()
    names = []
    for general_name in extension.value:
        if isinstance(
            general_name,
            crypto_x509.DNSName
            | crypto_x509.IPAddress
            | crypto_x509.RFC822Name
            | crypto_x509.UniformResourceIdentifier,
        ):
            names.append(str(general_name.value))
    return tuple(names)

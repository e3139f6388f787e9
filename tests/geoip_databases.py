"""Small MaxMind DB files for the geoip tests, written with the ``mmdb-writer`` package.

The records have the layout of MaxMind's GeoIP2/GeoLite2 City and ASN databases, for a few
public networks (documentation ranges are not globally routable: the processor skips them):
``81.2.69.0/24`` (London, as in MaxMind's own test data), ``89.160.20.0/24`` (Linköping, with
non-ASCII names) and ``2a02:ec80::/29`` (a country-only record: continent and country).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet

__all__ = ["ASN_RECORDS", "CITY_RECORDS", "write_asn_database", "write_city_database"]

CITY_RECORDS: dict[str, dict[str, Any]] = {
    "81.2.69.0/24": {
        "continent": {"code": "EU", "names": {"en": "Europe", "de": "Europa"}},
        "country": {"iso_code": "GB", "names": {"en": "United Kingdom", "de": "Vereinigtes Königreich"}},
        "subdivisions": [{"iso_code": "ENG", "names": {"en": "England"}}],
        "city": {"names": {"en": "London"}},
        "postal": {"code": "EC1A"},
        "location": {"latitude": 51.5142, "longitude": -0.0931, "time_zone": "Europe/London"},
    },
    "89.160.20.0/24": {
        "continent": {"code": "EU", "names": {"en": "Europe"}},
        "country": {"iso_code": "SE", "names": {"en": "Sweden"}},
        "subdivisions": [{"iso_code": "E", "names": {"en": "Östergötland County"}}],
        "city": {"names": {"en": "Linköping"}},
        "location": {"latitude": 58.4167, "longitude": 15.6167, "time_zone": "Europe/Stockholm"},
    },
    "2a02:ec80::/29": {
        "continent": {"code": "EU", "names": {"en": "Europe"}},
        "country": {"iso_code": "SE", "names": {"en": "Sweden"}},
    },
}
ASN_RECORDS: dict[str, dict[str, Any]] = {
    "81.2.69.0/24": {
        "autonomous_system_number": 20712,
        "autonomous_system_organization": "Andrews & Arnold Ltd",
    },
    "89.160.0.0/17": {"autonomous_system_number": 29518, "autonomous_system_organization": "Bredband2 AB"},
}


def _write(path: Path, database_type: str, records: dict[str, dict[str, Any]]) -> Path:
    writer = MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type=database_type,
        languages=["en"],
        description=f"flowpipe test {database_type}",
    )
    for network, record in records.items():
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path


def write_city_database(path: Path, records: dict[str, dict[str, Any]] = CITY_RECORDS) -> Path:
    """A City database (type ``GeoLite2-City``) holding ``records`` by network; return ``path``."""
    return _write(path, "GeoLite2-City", records)


def write_asn_database(path: Path, records: dict[str, dict[str, Any]] = ASN_RECORDS) -> Path:
    """An ASN database (type ``GeoLite2-ASN``) holding ``records`` by network; return ``path``."""
    return _write(path, "GeoLite2-ASN", records)

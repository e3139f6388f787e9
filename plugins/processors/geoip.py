"""The ``geoip`` processor: ECS ``geo`` and ``as`` fields from MaxMind DB files.

For every configured address field (``source.ip`` ...) it writes the sibling objects
``geo`` (from a City or Country database) and ``as`` (from an ASN database):
``source.geo.country_iso_code``, ``source.geo.location: {lat, lon}``, ``source.as.number``,
``source.as.organization.name``. Databases are read with ``maxminddb``, MaxMind's reader of the
MaxMind DB format (GeoIP2/GeoLite2, DB-IP lite and others ship in it).

Addresses that are not globally routable (private, loopback, link-local, multicast, reserved,
documentation ranges...) are skipped without a lookup; IPv4-mapped IPv6 addresses are looked
up as IPv4. Results are cached per address (bounded LRU, ``cache_size``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from functools import lru_cache
from types import SimpleNamespace
from typing import Any

import maxminddb

from flowpipe import (
    Event,
    Int,
    ListOf,
    Option,
    OptionError,
    Processor,
    StageContext,
    StartupError,
    Str,
    hookimpl,
)
from flowpipe.options import FieldPath

__all__ = ["GeoipProcessor", "as_fields", "geo_fields"]

DEFAULT_FIELDS = ("source.ip", "destination.ip", "client.ip", "server.ip")
SKIPPED, INVALID, NOT_FOUND, LOOKUP_ERROR = "skipped", "invalid", "not_found", "lookup_errors"
"""Lookup outcomes besides a result, and the names of their counters."""

Lookup = tuple[dict[str, Any] | None, dict[str, Any] | None] | str
"""``(geo, as)`` for an address found in a database, else one of the outcomes above."""


def _mapping(record: Any, key: str) -> Mapping[str, Any]:
    value = record.get(key) if isinstance(record, Mapping) else None
    return value if isinstance(value, Mapping) else {}


def _name(record: Mapping[str, Any], language: str) -> Any:
    return _mapping(record, "names").get(language)


def geo_fields(record: Any, language: str = "en") -> dict[str, Any]:
    """ECS ``geo`` fields from a City or Country record (empty when it has none)."""
    geo: dict[str, Any] = {}
    continent = _mapping(record, "continent")
    country = _mapping(record, "country")
    subdivisions = record.get("subdivisions") if isinstance(record, Mapping) else None
    region = subdivisions[0] if isinstance(subdivisions, list) and subdivisions else {}
    region = region if isinstance(region, Mapping) else {}
    location = _mapping(record, "location")
    values = (
        ("continent_name", _name(continent, language)),
        ("continent_code", continent.get("code")),
        ("country_name", _name(country, language)),
        ("country_iso_code", country.get("iso_code")),
        ("region_name", _name(region, language)),
        (
            "region_iso_code",
            f"{country['iso_code']}-{region['iso_code']}"
            if country.get("iso_code") and region.get("iso_code")
            else None,
        ),
        ("city_name", _name(_mapping(record, "city"), language)),
        ("postal_code", _mapping(record, "postal").get("code")),
        ("timezone", location.get("time_zone")),
    )
    geo.update((key, value) for key, value in values if value is not None)
    latitude, longitude = location.get("latitude"), location.get("longitude")
    if isinstance(latitude, (int, float)) and isinstance(longitude, (int, float)):
        geo["location"] = {"lat": latitude, "lon": longitude}
    return geo


def as_fields(record: Any) -> dict[str, Any]:
    """ECS ``as`` fields from an ASN record (empty when it has none)."""
    if not isinstance(record, Mapping):
        return {}
    fields: dict[str, Any] = {}
    number = record.get("autonomous_system_number")
    if isinstance(number, int):
        fields["number"] = number
    organization = record.get("autonomous_system_organization")
    if isinstance(organization, str):
        fields["organization"] = {"name": organization}
    return fields


def _copy(fields: dict[str, Any]) -> dict[str, Any]:
    """A copy of cached ``geo``/``as`` fields for one event (its nested object copied too)."""
    copied = dict(fields)
    for key in ("location", "organization"):
        if key in copied:
            copied[key] = dict(copied[key])
    return copied


class _Database:
    """One open MaxMind DB file."""

    def __init__(self, reader: maxminddb.Reader) -> None:
        self.reader = reader
        self.ipv4_only = reader.metadata().ip_version == 4

    def get(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Any:
        """The record of ``address``, or None (an IPv6 address in an IPv4 database has none)."""
        if address.version == 6 and self.ipv4_only:
            return None
        return self.reader.get(address)


def _skipped(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Not worth a lookup: private, loopback, link-local, multicast, reserved and the like."""
    return not address.is_global or address.is_multicast or address.is_reserved


class GeoipProcessor(Processor):
    """Add ECS geo and AS fields for IP addresses, from MaxMind DB files (City or Country, ASN)."""

    options = (
        Option("database", Str(nonempty=True), None, "City or Country database (.mmdb) for the geo fields"),
        Option("asn_database", Str(nonempty=True), None, "ASN database (.mmdb) for the as fields"),
        Option(
            "fields",
            ListOf(FieldPath(), min_items=1),
            list(DEFAULT_FIELDS),
            "address fields to look up; results go to their sibling geo and as objects",
        ),
        Option("cache_size", Int(0), 10000, "addresses whose lookup result is remembered (0: none)"),
    )

    @classmethod
    def check_config(cls, config: SimpleNamespace) -> list[OptionError]:
        if config.database is None and config.asn_database is None:
            return [OptionError("give database, asn_database or both", ("database",))]
        return []

    def __init__(self, config: SimpleNamespace, context: StageContext) -> None:
        super().__init__(config, context)
        self.readers: list[maxminddb.Reader] = []
        """Every database opened, to close."""
        self.city: _Database | None = None
        self.asn: _Database | None = None
        self.targets = [self._target(field) for field in config.fields]
        self.lookup: Callable[[str], Lookup] = lru_cache(maxsize=config.cache_size)(self._lookup)
        """The cached lookup of one address."""

    def open(self) -> None:
        try:
            self.city = self._open("database", self.config.database, asn=False)
            self.asn = self._open("asn_database", self.config.asn_database, asn=True)
        except StartupError:
            self.close()  # the pipeline closes only the stages that opened
            raise

    def _open(self, option: str, path_text: str | None, asn: bool) -> _Database | None:
        if path_text is None:
            return None
        path = self.context.resolve_path(path_text)
        where = f"geoip {self.context.id!r}: {option} {path}"
        try:
            reader = maxminddb.open_database(str(path))
        except FileNotFoundError:
            raise StartupError(f"{where}: no such file") from None
        except (maxminddb.InvalidDatabaseError, ValueError):  # ValueError: the pure-Python reader
            raise StartupError(f"{where}: not a MaxMind DB file, or a damaged one") from None
        except OSError as error:
            raise StartupError(f"{where}: {error.strerror or error}") from None
        self.readers.append(reader)
        kind = reader.metadata().database_type
        if asn and ("City" in kind or "Country" in kind):
            raise StartupError(f"{where}: a {kind!r} database; give it as database, not asn_database")
        if not asn and "ASN" in kind:
            raise StartupError(f"{where}: a {kind!r} database; give it as asn_database, not database")
        return _Database(reader)

    def close(self) -> None:
        for reader in self.readers:
            reader.close()
        self.readers.clear()

    @staticmethod
    def _target(field: str) -> tuple[Callable[[Event], Any], str]:
        """A reader of the object holding ``field``, and the address's key in it."""
        parent, _, key = field.rpartition(".")
        if not parent:
            return (lambda event: event), key
        parts = parent.split(".")

        def holder(event: Event) -> Any:
            node: Any = event
            for part in parts:
                node = node.get(part) if isinstance(node, dict) else None
            return node

        return holder, key

    def _lookup(self, text: str) -> Lookup:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            return INVALID
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if _skipped(address):
            return SKIPPED
        try:
            geo = geo_fields(self.city.get(address)) if self.city else {}
            asn = as_fields(self.asn.get(address)) if self.asn else {}
        except (maxminddb.InvalidDatabaseError, ValueError) as error:  # a damaged data section
            self.context.errors.error(
                "lookup", "geoip %r: lookup of %s failed: %s", self.context.id, text, error
            )
            return LOOKUP_ERROR
        if not geo and not asn:
            return NOT_FOUND
        return geo or None, asn or None

    def process(self, events: list[Event]) -> list[Event]:
        lookup = self.lookup
        counts: dict[str, int] = {}
        for event in events:
            for holder, key in self.targets:
                parent = holder(event)
                if not isinstance(parent, dict):
                    continue
                text = parent.get(key)
                if text is None:
                    continue
                result = lookup(text) if isinstance(text, str) else INVALID
                if isinstance(result, str):
                    counts[result] = counts.get(result, 0) + 1
                    continue
                geo, asn = result
                if geo is not None:
                    parent["geo"] = _copy(geo)
                if asn is not None:
                    parent["as"] = _copy(asn)
                counts["enriched"] = counts.get("enriched", 0) + 1
        self.context.counters.add_many(counts)
        return events


@hookimpl
def flowpipe_add_processors() -> dict[str, type[Processor]]:
    return {"geoip": GeoipProcessor}

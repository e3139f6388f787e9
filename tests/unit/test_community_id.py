"""Community ID v1 against the published test vectors of the spec
(https://github.com/corelight/community-id-spec, baseline/): the tables of its README (defaults,
seed 1, and the digests without base64) and the JSON baselines computed from its pcaps."""

from __future__ import annotations

import base64
import ipaddress

import pytest

from flowpipe.plugins.decoders.community_id import community_id, icmp_ports

V6_A = "fe80:0001:0203:0405:0607:0809:0A0B:0C0D"
V6_B = "fe80:1011:1213:1415:1617:1819:1A1B:1C1D"
TABLE = [  # proto, source, destination, source port, destination port, default, seed 1, hex digest
    (
        6,
        "1.2.3.4",
        "5.6.7.8",
        1122,
        3344,
        "wCb3OG7yAFWelaUydu0D+125CLM=",
        "HhA1B+6CoLbiKPEs5nhNYN4XWfk=",
        "c026f7386ef200559e95a53276ed03fb5db908b3",
    ),
    (
        6,
        "5.6.7.8",
        "1.2.3.4",
        3344,
        1122,
        "wCb3OG7yAFWelaUydu0D+125CLM=",
        "HhA1B+6CoLbiKPEs5nhNYN4XWfk=",
        "c026f7386ef200559e95a53276ed03fb5db908b3",
    ),
    (
        17,
        "1.2.3.4",
        "5.6.7.8",
        1122,
        3344,
        "0Mu9InQx6z4ZiCZM/7HXi2WMhOg=",
        "OShq+iKDAMVouh/4bMxB9Sz4amw=",
        "d0cbbd227431eb3e1988264cffb1d78b658c84e8",
    ),
    (
        17,
        "5.6.7.8",
        "1.2.3.4",
        3344,
        1122,
        "0Mu9InQx6z4ZiCZM/7HXi2WMhOg=",
        "OShq+iKDAMVouh/4bMxB9Sz4amw=",
        "d0cbbd227431eb3e1988264cffb1d78b658c84e8",
    ),
    (
        132,
        "1.2.3.4",
        "5.6.7.8",
        1122,
        3344,
        "EKt4MsxuyaE6mL+hmrEkQ9csDD8=",
        "uitchpn5MMGAQKBJh7bIr/bAr7s=",
        "10ab7832cc6ec9a13a98bfa19ab12443d72c0c3f",
    ),
    (
        132,
        "5.6.7.8",
        "1.2.3.4",
        3344,
        1122,
        "EKt4MsxuyaE6mL+hmrEkQ9csDD8=",
        "uitchpn5MMGAQKBJh7bIr/bAr7s=",
        "10ab7832cc6ec9a13a98bfa19ab12443d72c0c3f",
    ),
    (
        1,
        "1.2.3.4",
        "5.6.7.8",
        8,
        0,
        "crodRHL2FEsHjbv3UkRrfbs4bZ0=",
        "9pr4ZGTICiuZoIh90RRYE2RyXpU=",
        "72ba1d4472f6144b078dbbf752446b7dbb386d9d",
    ),
    (
        1,
        "5.6.7.8",
        "1.2.3.4",
        0,
        0,
        "crodRHL2FEsHjbv3UkRrfbs4bZ0=",
        "9pr4ZGTICiuZoIh90RRYE2RyXpU=",
        "72ba1d4472f6144b078dbbf752446b7dbb386d9d",
    ),
    (
        1,
        "1.2.3.4",
        "5.6.7.8",
        11,
        0,
        "f/YiSyWqczrTgfUCZlBUnvHRcPk=",
        "1DD7cWGC/Yg91YGsQeni8du3pIA=",
        "7ff6224b25aa733ad381f5026650549ef1d170f9",
    ),
    (
        58,
        V6_A,
        V6_B,
        128,
        0,
        "0bf7hyMJUwt3fMED7z8LIfRpBeo=",
        "IO27GQzPuCtNnwFvjWALMHu5tJE=",
        "d1b7fb872309530b777cc103ef3f0b21f46905ea",
    ),
    (
        58,
        V6_B,
        V6_A,
        129,
        0,
        "0bf7hyMJUwt3fMED7z8LIfRpBeo=",
        "IO27GQzPuCtNnwFvjWALMHu5tJE=",
        "d1b7fb872309530b777cc103ef3f0b21f46905ea",
    ),
    (
        58,
        V6_A,
        V6_B,
        146,
        0,
        "fYC8+pz24E+EhANP1EZhpX0Dw10=",
        "Cv4IKJe56BNkF0MBW2YxQ3Nwc3s=",
        "7d80bcfa9cf6e04f8484034fd44661a57d03c35d",
    ),
    (
        46,
        "1.2.3.4",
        "5.6.7.8",
        None,
        None,
        "ikv3kmf89luf73WPz1jOs49S768=",
        "/buhqeOmaRCopOZFy9HnoJd5XW8=",
        "8a4bf79267fcf65b9fef758fcf58ceb38f52efaf",
    ),
    (
        46,
        "5.6.7.8",
        "1.2.3.4",
        None,
        None,
        "ikv3kmf89luf73WPz1jOs49S768=",
        "/buhqeOmaRCopOZFy9HnoJd5XW8=",
        "8a4bf79267fcf65b9fef758fcf58ceb38f52efaf",
    ),
    (
        46,
        V6_A,
        V6_B,
        None,
        None,
        "wQ/2mwrnXP4lmJcHdGL5ePjR+e0=",
        "j6EyyfBzL4vWKHFXgUqb5Az3OxM=",
        "c10ff69b0ae75cfe259897077462f978f8d1f9ed",
    ),
    (
        46,
        V6_B,
        V6_A,
        None,
        None,
        "wQ/2mwrnXP4lmJcHdGL5ePjR+e0=",
        "j6EyyfBzL4vWKHFXgUqb5Az3OxM=",
        "c10ff69b0ae75cfe259897077462f978f8d1f9ed",
    ),
]
"""The README's tables; for ICMP the ports are the message type and code."""
# baseline/baseline_deflt.json and baseline/baseline_seed1.json: for ICMP, "sport" is the type and
# "dport" its counterpart type (request/response pairs) or code (one-way messages).
BASELINE_DEFAULT = [
    (58, "fe80::200:86ff:fe05:80da", "fe80::260:97ff:fe07:69ea", 135, 136, "1:dGHyGvjMfljg6Bppwm3bg0LO8TY="),
    (58, "fe80::260:97ff:fe07:69ea", "fe80::200:86ff:fe05:80da", 136, 135, "1:dGHyGvjMfljg6Bppwm3bg0LO8TY="),
    (58, "fe80::260:97ff:fe07:69ea", "fe80::200:86ff:fe05:80da", 135, 136, "1:zavyT/cezQr1fmImYCwYnMXbgck="),
    (58, "fe80::200:86ff:fe05:80da", "fe80::260:97ff:fe07:69ea", 136, 135, "1:zavyT/cezQr1fmImYCwYnMXbgck="),
    (58, "3ffe:501:1800:2345::2", "3ffe:507:0:1:200:86ff:fe05:80da", 3, 0, "1:2ObVBgIn28oZvibYZhZMBgh7WdQ="),
    (
        58,
        "3ffe:501:410:0:2c0:dfff:fe47:33e",
        "3ffe:507:0:1:200:86ff:fe05:80da",
        1,
        4,
        "1:hLZd0XGWojozrvxqE0dWB1iM6R0=",
    ),
    (58, "3ffe:507:0:1:200:86ff:fe05:80da", "3ffe:501:0:1001::2", 128, 129, "1:+TW+HtLHvV1xnGhV1lv7XoJrqQg="),
    (58, "3ffe:501:0:1001::2", "3ffe:507:0:1:200:86ff:fe05:80da", 129, 128, "1:+TW+HtLHvV1xnGhV1lv7XoJrqQg="),
    (58, "fe80::200:86ff:fe05:80da", "ff02::2", 133, 134, "1:hO+sN4H+MG5MY/8hIrXPqc4ZQz0="),
    (58, "fe80::260:97ff:fe07:69ea", "ff02::1", 134, 133, "1:pkvHqCL88/tg1k4cPigmZXUtL00="),
    (1, "192.168.0.89", "192.168.0.1", 8, 0, "1:X0snYXpgwiv9TZtqg64sgzUn6Dk="),
    (1, "192.168.0.1", "192.168.0.89", 0, 8, "1:X0snYXpgwiv9TZtqg64sgzUn6Dk="),
    (1, "10.0.0.1", "10.0.0.2", 11, 0, "1:YHxtAirCG//0OzkcVAukqKQN9xM="),
    (
        6,
        "2001:470:e5bf:dead:4957:2174:e82c:4887",
        "2607:f8b0:400c:c03::1a",
        63943,
        25,
        "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4=",
    ),
    (
        6,
        "2607:f8b0:400c:c03::1a",
        "2001:470:e5bf:dead:4957:2174:e82c:4887",
        25,
        63943,
        "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4=",
    ),
    (132, "192.168.170.8", "192.168.170.56", 7, 7, "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs="),
    (132, "192.168.170.56", "192.168.170.8", 7, 7, "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs="),
    (6, "128.232.110.120", "66.35.250.204", 34855, 80, "1:LQU9qZlK+B5F3KDmev6m5PMibrg="),
    (6, "66.35.250.204", "128.232.110.120", 80, 34855, "1:LQU9qZlK+B5F3KDmev6m5PMibrg="),
    (17, "192.168.1.52", "8.8.8.8", 54585, 53, "1:d/FP5EW3wiY1vCndhwleRRKHowQ="),
    (17, "8.8.8.8", "192.168.1.52", 53, 54585, "1:d/FP5EW3wiY1vCndhwleRRKHowQ="),
    (46, "10.1.12.1", "10.1.12.2", None, None, "1:KHlLkgoJW7ifUTyTSgyVfkFHzKw="),
    (46, "10.1.12.2", "10.1.12.1", None, None, "1:KHlLkgoJW7ifUTyTSgyVfkFHzKw="),
]
BASELINE_SEED_1 = [
    (58, "fe80::200:86ff:fe05:80da", "fe80::260:97ff:fe07:69ea", 135, 136, "1:kHa1FhMYIT6Ym2Vm2AOtoOARDzY="),
    (58, "fe80::260:97ff:fe07:69ea", "fe80::200:86ff:fe05:80da", 136, 135, "1:kHa1FhMYIT6Ym2Vm2AOtoOARDzY="),
    (58, "fe80::260:97ff:fe07:69ea", "fe80::200:86ff:fe05:80da", 135, 136, "1:2hSqmsDZ2kdcY9kbiUzOEBic0iM="),
    (58, "fe80::200:86ff:fe05:80da", "fe80::260:97ff:fe07:69ea", 136, 135, "1:2hSqmsDZ2kdcY9kbiUzOEBic0iM="),
    (58, "3ffe:501:1800:2345::2", "3ffe:507:0:1:200:86ff:fe05:80da", 3, 0, "1:lVEtCZpYu84Xqaa++3lXFyuu2n4="),
    (
        58,
        "3ffe:501:410:0:2c0:dfff:fe47:33e",
        "3ffe:507:0:1:200:86ff:fe05:80da",
        1,
        4,
        "1:W8MHwXpWzpoSTD+cGcaJr4u0ys8=",
    ),
    (58, "3ffe:507:0:1:200:86ff:fe05:80da", "3ffe:501:0:1001::2", 128, 129, "1:GfZxjAkDk2MkegpBYHV6tadtFXQ="),
    (58, "3ffe:501:0:1001::2", "3ffe:507:0:1:200:86ff:fe05:80da", 129, 128, "1:GfZxjAkDk2MkegpBYHV6tadtFXQ="),
    (58, "fe80::200:86ff:fe05:80da", "ff02::2", 133, 134, "1:L7Ka0ZMYu+J3bL4ulW2PrqyXNo8="),
    (58, "fe80::260:97ff:fe07:69ea", "ff02::1", 134, 133, "1:K/ee5UCqAMAQXDorP5nSa2CGLjc="),
    (1, "192.168.0.89", "192.168.0.1", 8, 0, "1:03g6IloqVBdcZlPyX8r0hgoE7kA="),
    (1, "192.168.0.1", "192.168.0.89", 0, 8, "1:03g6IloqVBdcZlPyX8r0hgoE7kA="),
    (1, "10.0.0.1", "10.0.0.2", 11, 0, "1:XjUibYHaafLQ3pxQeiMI8g25q20="),
    (
        6,
        "2001:470:e5bf:dead:4957:2174:e82c:4887",
        "2607:f8b0:400c:c03::1a",
        63943,
        25,
        "1:eJYTW6AOzFLlSUoESovMjnu7rMw=",
    ),
    (
        6,
        "2607:f8b0:400c:c03::1a",
        "2001:470:e5bf:dead:4957:2174:e82c:4887",
        25,
        63943,
        "1:eJYTW6AOzFLlSUoESovMjnu7rMw=",
    ),
    (132, "192.168.170.8", "192.168.170.56", 7, 7, "1:5w3ZRjeKBzqT3zsaEECDGjUbYeg="),
    (132, "192.168.170.56", "192.168.170.8", 7, 7, "1:5w3ZRjeKBzqT3zsaEECDGjUbYeg="),
    (6, "128.232.110.120", "66.35.250.204", 34855, 80, "1:3V71V58M3Ksw/yuFALMcW0LAHvc="),
    (6, "66.35.250.204", "128.232.110.120", 80, 34855, "1:3V71V58M3Ksw/yuFALMcW0LAHvc="),
    (17, "192.168.1.52", "8.8.8.8", 54585, 53, "1:Q9We8WO3piVF8yEQBNJF4uiSVrI="),
    (17, "8.8.8.8", "192.168.1.52", 53, 54585, "1:Q9We8WO3piVF8yEQBNJF4uiSVrI="),
    (46, "10.1.12.1", "10.1.12.2", None, None, "1:rYir8gphR31noO9iDRQmF/BteEI="),
    (46, "10.1.12.2", "10.1.12.1", None, None, "1:rYir8gphR31noO9iDRQmF/BteEI="),
]


def flow_id(
    protocol: int, source: str, destination: str, sport: int | None, dport: int | None, seed: int
) -> str:
    """The Community ID of a tuple as the ``ip`` decoder computes it (ICMP: type and code mapped)."""
    packed_source = ipaddress.ip_address(source).packed
    packed_destination = ipaddress.ip_address(destination).packed
    if protocol in (1, 58):
        sport, dport, one_way = icmp_ports(protocol, sport, dport)
        return community_id(packed_source, packed_destination, protocol, sport, dport, seed, one_way)
    return community_id(packed_source, packed_destination, protocol, sport or 0, dport or 0, seed)


@pytest.mark.parametrize(
    ("protocol", "source", "destination", "sport", "dport", "default", "seed1", "digest"), TABLE
)
def test_readme_tables(
    protocol: int,
    source: str,
    destination: str,
    sport: int,
    dport: int,
    default: str,
    seed1: str,
    digest: str,
) -> None:
    assert flow_id(protocol, source, destination, sport, dport, seed=0) == "1:" + default
    assert flow_id(protocol, source, destination, sport, dport, seed=1) == "1:" + seed1
    assert base64.b64decode(flow_id(protocol, source, destination, sport, dport, seed=0)[2:]).hex() == digest


@pytest.mark.parametrize(
    ("protocol", "source", "destination", "sport", "dport", "expected"), BASELINE_DEFAULT
)
def test_baseline_default(
    protocol: int, source: str, destination: str, sport: int, dport: int, expected: str
) -> None:
    assert flow_id(protocol, source, destination, sport, dport, seed=0) == expected


@pytest.mark.parametrize(("protocol", "source", "destination", "sport", "dport", "expected"), BASELINE_SEED_1)
def test_baseline_seed_1(
    protocol: int, source: str, destination: str, sport: int, dport: int, expected: str
) -> None:
    assert flow_id(protocol, source, destination, sport, dport, seed=1) == expected


def test_icmp_port_equivalents() -> None:
    assert icmp_ports(1, 8, 0) == (8, 0, False)  # echo request: its reply's type
    assert icmp_ports(1, 0, 0) == (0, 8, False)
    assert icmp_ports(1, 3, 1) == (3, 1, True)  # unreachable: one-way, the code
    assert icmp_ports(58, 135, 0) == (135, 136, False)
    assert icmp_ports(58, 1, 4) == (1, 4, True)

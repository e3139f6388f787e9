"""The DPDK binding: ``_flowpipe_dpdk.c`` built against the system DPDK on first use, loaded with ctypes.

DPDK's receive path is inline C (``rte_eth_rx_burst``, mbuf fields), so flowpipe carries a small C
file and compiles it with the system compiler the first time a ``dpdk`` input starts, with the
flags ``pkg-config --cflags --libs libdpdk`` gives. The library is cached in
``$XDG_CACHE_HOME/flowpipe/dpdk/`` (``~/.cache/flowpipe/dpdk/``) under a name derived from the
source, the DPDK version and its flags, so a DPDK upgrade or a new flowpipe builds it again. This
needs, on the machine that runs the input: DPDK's development files (Debian/Ubuntu ``dpdk`` and
``libdpdk-dev``), ``pkg-config`` and a C compiler (``cc``, or ``$CC``).

Why not a compiled extension in flowpipe's wheel: the wheel would bind one DPDK version (their ABI
changes every year) and could not be built where DPDK is absent; building at first use keeps
flowpipe a pure-Python install and follows whatever DPDK the machine has.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shlex
import subprocess
import tempfile
from pathlib import Path

__all__ = ["INSTALL_HINT", "BindingError", "load"]

SOURCE = Path(__file__).with_name("_flowpipe_dpdk.c")
INSTALL_HINT = (
    "the dpdk input needs DPDK's development files, pkg-config and a C compiler: "
    "apt-get install dpdk libdpdk-dev pkg-config gcc (Debian/Ubuntu)"
)
COMPILE_FLAGS = ("-O2", "-fPIC", "-shared", "-ffp-contract=off", "-DALLOW_EXPERIMENTAL_API")
"""``-ffp-contract=off``: timestamps are computed exactly as the pcap input does (no fused multiply-add);
``ALLOW_EXPERIMENTAL_API``: ``rte_thread_register`` is experimental in DPDK 22.11."""

c_buffer = ctypes.c_void_p
c_text = ctypes.c_char_p
_SIGNATURES: dict[str, tuple[type | None, list[type]]] = {
    "fpd_eal_init": (ctypes.c_int, [ctypes.c_int, ctypes.POINTER(c_text), c_buffer, ctypes.c_size_t]),
    "fpd_runtime_dir": (c_text, []),
    "fpd_port_count": (ctypes.c_int, []),
    "fpd_port_driver": (ctypes.c_int, [ctypes.c_uint16, c_buffer, ctypes.c_size_t]),
    "fpd_port_name": (ctypes.c_int, [ctypes.c_uint16, c_buffer, ctypes.c_size_t]),
    "fpd_port_open": (
        ctypes.c_int,
        [
            ctypes.c_uint16,
            ctypes.c_uint16,
            ctypes.c_uint16,
            ctypes.c_uint32,
            ctypes.c_uint32,
            ctypes.c_int,
            c_buffer,
            ctypes.c_size_t,
        ],
    ),
    "fpd_port_pcap_timestamps": (ctypes.c_int, [ctypes.c_uint16]),
    "fpd_thread_register": (ctypes.c_int, []),
    "fpd_rx_burst": (
        ctypes.c_int,
        [
            ctypes.c_uint16,
            ctypes.c_uint16,
            ctypes.c_uint16,
            c_buffer,
            ctypes.c_uint32,
            c_buffer,
            c_buffer,
            c_buffer,
        ],
    ),
    "fpd_port_stats": (ctypes.c_int, [ctypes.c_uint16, c_buffer]),
    "fpd_port_close": (None, [ctypes.c_uint16]),
    "fpd_eal_cleanup": (ctypes.c_int, []),
}


class BindingError(Exception):
    """The binding cannot be built or loaded; the message is one line saying why and what to do."""


def load() -> ctypes.CDLL:
    """The binding, built first if this source, DPDK version and flags have no cached build yet."""
    version, cflags, libs = _pkg_config()
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join((source, version.encode(), cflags.encode(), libs.encode()))).hexdigest()
    library = _cache_dir() / f"flowpipe_dpdk-{version}-{key[:16]}.so"
    if not library.is_file():
        _compile(library, cflags, libs)
    try:
        binding = ctypes.CDLL(str(library))
    except OSError as error:
        raise BindingError(f"cannot load the DPDK binding {library}: {error}") from None
    for name, (result, arguments) in _SIGNATURES.items():
        function = getattr(binding, name)
        function.restype = result
        function.argtypes = arguments
    return binding


def _pkg_config() -> tuple[str, str, str]:
    """DPDK's version, compiler flags and linker flags, as pkg-config knows them."""
    answers = []
    for query in ("--modversion", "--cflags", "--libs"):
        try:
            done = subprocess.run(
                ["pkg-config", query, "libdpdk"], capture_output=True, text=True, check=False, timeout=30
            )
        except FileNotFoundError:
            raise BindingError(
                f"pkg-config is not installed, so DPDK cannot be found; {INSTALL_HINT}"
            ) from None
        if done.returncode != 0:
            raise BindingError(f"DPDK is not installed (pkg-config finds no libdpdk); {INSTALL_HINT}")
        answers.append(done.stdout.strip())
    version, cflags, libs = answers
    return version, cflags, libs


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    folder = Path(base) / "flowpipe" / "dpdk"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BindingError(f"cannot create {folder} for the DPDK binding: {error.strerror}") from None
    return folder


def _compile(library: Path, cflags: str, libs: str) -> None:
    """Build the binding into ``library`` (through a temporary file, so concurrent builds are safe)."""
    compiler = shlex.split(os.environ.get("CC") or "cc")
    handle, scratch = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=library.parent)
    os.close(handle)
    command = [
        *compiler,
        *COMPILE_FLAGS,
        *shlex.split(cflags),
        str(SOURCE),
        "-o",
        scratch,
        *shlex.split(libs),
    ]
    try:
        try:
            done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
        except FileNotFoundError:
            raise BindingError(
                f"no C compiler ({compiler[0]}) to build the DPDK binding; {INSTALL_HINT}"
            ) from None
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if "error" in line] or done.stderr.splitlines()
            reason = lines[0].strip() if lines else f"exit status {done.returncode}"
            raise BindingError(f"building the DPDK binding failed: {reason} (command: {shlex.join(command)})")
        os.replace(scratch, library)
    finally:
        if os.path.exists(scratch):
            os.unlink(scratch)

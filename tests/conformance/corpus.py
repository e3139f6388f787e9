"""The shared corpus of real-world captures (``../shared/corpus``) the conformance tests read.

The project never needs ``../shared`` to pass its own tests: a test module calls
:func:`require` first, which skips the whole module with a message where the corpus or a
Wireshark program is absent.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"


def require(*programs: str) -> None:
    """Skip the calling test module unless the corpus and every one of ``programs`` exist."""
    if not CORPUS.is_dir():
        pytest.skip(f"conformance corpus not found at {CORPUS}", allow_module_level=True)
    for program in programs:
        if shutil.which(program) is None:
            pytest.skip(f"{program} is not installed (apt-get install tshark)", allow_module_level=True)


def captures() -> list[Path]:
    """Every capture of the corpus, by name."""
    return sorted(CORPUS.glob("*.pcap"))

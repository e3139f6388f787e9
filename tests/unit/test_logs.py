"""Log set-up: level filtering and the JSON line format."""

from __future__ import annotations

import json
import logging

import pytest

from flowpipe.logs import configure_logging


@pytest.fixture(autouse=True)
def restore_flowpipe_logger() -> object:
    """configure_logging changes the process-wide "flowpipe" logger: put it back afterwards."""
    logger = logging.getLogger("flowpipe")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


def test_json_format_writes_one_object_per_line_at_the_configured_level(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("warning", "json")
    logger = logging.getLogger("flowpipe.pcap")
    logger.info("not shown")
    logger.warning("damaged capture at byte offset %d", 4977)
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("input failed")

    lines = capsys.readouterr().err.splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    assert [(e["log.level"], e["log.logger"], e["message"]) for e in entries] == [
        ("warning", "flowpipe.pcap", "damaged capture at byte offset 4977"),
        ("error", "flowpipe.pcap", "input failed"),
    ]
    assert entries[1]["error.stack_trace"].endswith("ValueError: boom")
    assert len(lines) == 2  # the stack trace stays inside its JSON line


def test_text_format_names_level_and_logger(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("debug", "text")
    logging.getLogger("flowpipe.ip").debug("decoded %d packets", 3)

    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith(" DEBUG flowpipe.ip: decoded 3 packets")

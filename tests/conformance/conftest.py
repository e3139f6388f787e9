"""Prints how far flowpipe agrees with tshark on the corpus, after the test run."""

from __future__ import annotations

import sys
from typing import Any


def pytest_terminal_summary(terminalreporter: Any) -> None:
    module = sys.modules.get("test_corpus")
    report = getattr(module, "REPORT", None)
    if not report or not report["captures"]:
        return
    write = terminalreporter.write_line
    conversations_ok, conversations = report["conversations"]
    streams_ok, streams = report["streams"]
    terminalreporter.section("conformance with tshark")
    write(f"captures: {report['captures']}")
    write(f"conversations (frames and bytes per direction): {conversations_ok}/{conversations} agree")
    write(f"TCP streams without losses (payload per direction): {streams_ok}/{streams} agree")
    for name, reason, differences in report["differences"]:
        write(f"known difference in {name}: {reason}")
        for difference in differences:
            write(f"    {difference}")

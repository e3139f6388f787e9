"""Prints how far flowpipe agrees with tshark on the corpus, after the test run."""

from __future__ import annotations

import sys
from typing import Any


def pytest_terminal_summary(terminalreporter: Any) -> None:
    _flows_and_streams(terminalreporter)
    _protocols(terminalreporter)


def _flows_and_streams(terminalreporter: Any) -> None:
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


def _protocols(terminalreporter: Any) -> None:
    module = sys.modules.get("test_protocols")
    report = getattr(module, "REPORT", None)
    if not report or not report["measures"]:
        return
    write = terminalreporter.write_line
    terminalreporter.section("protocol analyzers against tshark (default ports)")
    write(f"captures: {report['captures']}")
    header = ("measure", "tshark", "flowpipe", "matched", "recall", "precision", "other ports")
    rows = [header]
    for label, (theirs, ours, matched, theirs_elsewhere, ours_elsewhere) in report["measures"].items():
        rows.append(
            (
                label, str(theirs), str(ours), str(matched), _ratio(matched, theirs), _ratio(matched, ours),
                f"tshark {theirs_elsewhere}, flowpipe {ours_elsewhere}",
            )
        )  # fmt: skip
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    for row in rows:
        write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    for protocol, name, reason, differences in report["differences"]:
        write(f"{protocol} differs in {name}: {reason or 'NOT EXPLAINED (not in EXCEPTIONS)'}")
        for difference in differences:
            write(f"    {difference}")


def _ratio(matched: int, total: int) -> str:
    return f"{100 * matched / total:.1f}%" if total else "-"

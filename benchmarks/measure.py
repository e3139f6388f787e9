"""Run a command and write its wall time, CPU time and peak RSS as JSON: ``python -S measure.py OUT CMD...``.

A child's ``ru_maxrss`` includes the peak of the process it was forked from (Linux keeps the larger
of the two across ``exec``), so the benchmark runner forks every measured program from this tiny
interpreter (started with ``-S``: a few MB) rather than from itself. ``ru_maxrss`` of a waited-for
child is the largest peak among it and its own waited-for children (nfstream's meter process, say),
not their sum. Exit status: the command's.
"""

import json
import os
import sys
import time

started = time.monotonic()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
wall = time.monotonic() - started
with open(sys.argv[1], "w") as out:
    json.dump(
        {
            "wall_s": wall,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_bytes": usage.ru_maxrss * 1024,
            "status": os.waitstatus_to_exitcode(status),
        },
        out,
    )
sys.exit(os.waitstatus_to_exitcode(status) & 0xFF)

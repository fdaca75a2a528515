"""``python -m agentfly_min.bench bench.json ...`` prints each report's
Markdown table (what the README holds); ``--recompute`` first rewrites each
file's intervals and verdicts from its stored samples with this version's
estimator (see ``recompute``)."""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec

from .recompute import recompute_report, recompute_suites
from .report import BenchReport, main

argv = sys.argv[1:]
if argv[:1] == ["--recompute"]:
    argv = argv[1:]
    for name in argv:
        path = Path(name)
        data = path.read_bytes()
        if b'"machine_info"' in data:
            again = recompute_suites(data)
            changed = msgspec.json.decode(again) != msgspec.json.decode(data)
        else:
            report = msgspec.json.decode(data, type=BenchReport)
            recomputed = recompute_report(report)
            again, changed = msgspec.json.format(msgspec.json.encode(recomputed)), recomputed != report
        if changed:  # a file whose intervals hold is left byte for byte
            path.write_bytes(again)
raise SystemExit(main(argv))

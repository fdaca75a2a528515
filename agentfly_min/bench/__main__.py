"""``python -m agentfly_min.bench bench.json ...`` prints each report's
Markdown table (what the README holds)."""

from __future__ import annotations

import sys

from .report import main

raise SystemExit(main(sys.argv[1:]))

"""`python -m orchestrator.analyze RESULTS [...] [--out DIR]`, the same as `sentinel-bench analyze`."""
from __future__ import annotations

import sys

from orchestrator.cli import main

sys.exit(main(["analyze", *sys.argv[1:]]))

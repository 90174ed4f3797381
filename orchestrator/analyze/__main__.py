"""`python -m orchestrator.analyze RESULTS [...] [--out DIR]`, the same as `sentinel-bench analyze`."""
from __future__ import annotations

import argparse
import sys

from orchestrator.analyze import add_arguments, main

parser = argparse.ArgumentParser(prog="python -m orchestrator.analyze")
add_arguments(parser)
sys.exit(main(parser.parse_args()))

"""Runs hostile inputs through the real `sentinel-bench` CLI (orchestrator.cli.main) in this one process, one case
after another, and prints a JSON line per case: exit code, stderr, seconds. Used by test_fuzz.py, which starts it
with HOME and the working directory in a fresh temp folder.

    python fuzz_driver.py CASES.json
"""
from __future__ import annotations

import contextlib
import io
import json
import sys
import time
import traceback


def main(path: str) -> None:
    from orchestrator import cli

    for case in json.loads(open(path, encoding="utf-8").read()):
        err, out = io.StringIO(), io.StringIO()
        started = time.time()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = cli.main(case["argv"])
            except SystemExit as exc:  # argparse
                code = exc.code
            except BaseException:  # a traceback is what the test refuses: record it
                traceback.print_exc()
                code = "traceback"
        print(json.dumps({"name": case["name"], "code": code, "stderr": err.getvalue(),
                          "seconds": time.time() - started}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])

"""Stops a local Ray with its driver, even when the driver is killed with SIGKILL.

`ray.init()` starts the GCS, the raylet and their agents (dashboard agent, runtime-env agent) as the driver's
children; Ray ties some of them to the driver's life, not all, and a SIGKILLed driver cannot clean up. So the
driver starts this watchdog with the processes it started (pid and start time, so a reused pid is never hit) and
a pipe: when the pipe closes (the driver exited, however), the watchdog ends those processes and every process
below them, SIGTERM first, SIGKILL after a grace period.

    python -m orchestrator.watchdog PID:START_TIME ...      (stdin: the driver's end of a pipe)
"""
from __future__ import annotations

import subprocess
import sys
from typing import Sequence

# a killed driver's Ray serves no one: SIGKILL whatever ignores SIGTERM this long (its agents ignore it for 10 s)
GRACE_S = 2.0


def children_of_this_process() -> list[str]:
    """`pid:create_time` of every process below this one (called right after ray.init)."""
    import psutil

    return [f"{p.pid}:{p.create_time()}" for p in psutil.Process().children(recursive=True)]


def start(processes: Sequence[str]) -> subprocess.Popen | None:
    """Starts the watchdog over `processes`; the returned Popen's stdin is the pipe (closed when this process ends)."""
    if not processes:
        return None
    return subprocess.Popen([sys.executable, "-m", "orchestrator.watchdog", *processes], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def stop(watchdog: subprocess.Popen | None) -> None:
    """After a clean ray.shutdown: close the pipe (the watchdog ends what is left) and let it finish."""
    if watchdog is None:
        return
    if watchdog.stdin:
        watchdog.stdin.close()
    try:
        watchdog.wait(timeout=GRACE_S + 5)
    except subprocess.TimeoutExpired:
        watchdog.kill()


def reap(processes: Sequence[str]) -> None:
    """Ends the given processes (those whose start time still matches) and everything below them."""
    import psutil

    targets: dict[int, psutil.Process] = {}
    for item in processes:
        pid, _, created = item.partition(":")
        try:
            process = psutil.Process(int(pid))
            if abs(process.create_time() - float(created)) > 0.01:
                continue  # the pid now belongs to another process
            for p in [process, *process.children(recursive=True)]:
                targets[p.pid] = p
        except (psutil.Error, ValueError):
            continue
    for p in targets.values():
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(list(targets.values()), timeout=GRACE_S)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


def main(argv: Sequence[str]) -> None:
    sys.stdin.buffer.read()  # returns at EOF: the driver closed the pipe or died
    reap(argv)


if __name__ == "__main__":
    main(sys.argv[1:])

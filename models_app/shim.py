"""The local runner's supervisor: ``python shim.py LOG LIMIT EXIT_FILE -- PROGRAM ARGS...``.

Started in its own session, so it outlives the Celery worker that launched it. It runs the program, copies
its stdout and stderr into LOG up to LIMIT bytes (the rest is drained and counted, never stored), and writes
the exit status to EXIT_FILE atomically when the program ends. SIGTERM is passed on to the program.
Standard library only: it must not import the platform.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def main(argv: list[str]) -> int:
    log_path, limit_text, exit_path, dash, *program = argv
    if dash != "--" or not program:
        print("usage: shim.py LOG LIMIT EXIT_FILE -- PROGRAM ARGS...", file=sys.stderr)
        return 2
    limit = int(limit_text)
    child = subprocess.Popen(program, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def forward(signum: int, _frame: object) -> None:
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    written = dropped = 0
    assert child.stdout is not None
    with open(log_path, "ab", buffering=0) as log:
        while chunk := child.stdout.read1(65536):  # type: ignore[attr-defined]
            room = limit - written
            if room > 0:
                log.write(chunk[:room])
                written += min(room, len(chunk))
            dropped += max(0, len(chunk) - max(room, 0))
        if dropped:
            log.write(f"\n[ymir: log cut at {limit} bytes; {dropped} more bytes were dropped]\n".encode())
    code = child.wait()
    partial = exit_path + ".partial"
    with open(partial, "w") as handle:
        handle.write(str(code))
    os.replace(partial, exit_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""A stand-in for an AI agent or any job: does what its arguments say, in order.

print TEXT            print a line (flushed)
sleep SECONDS         sleep
exit CODE             exit with CODE
hang                  sleep forever, printing nothing
ignore-term           ignore SIGTERM from here on
grandchild SECONDS    start a grandchild that keeps stdout open, ignores SIGTERM and
                      sleeps SECONDS (its pid is printed as `grandchild PID`)
fail-until N FILE     exit 1 until this is the N-th call (counted in FILE), then go on
env NAME              print NAME=value of an environment variable
append FILE TEXT      append TEXT and a newline to FILE (one write)
daemonize SECONDS FILE  fork a grandchild that calls setsid(), closes every descriptor it
                      inherited (the lock keys too), writes its pid to FILE and sleeps SECONDS
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def main(args: list[str]) -> int:
    i = 0
    while i < len(args):
        action = args[i]
        if action == "print":
            print(args[i + 1], flush=True)
            i += 2
        elif action == "sleep":
            time.sleep(float(args[i + 1]))
            i += 2
        elif action == "exit":
            return int(args[i + 1])
        elif action == "hang":
            while True:
                time.sleep(60)
        elif action == "ignore-term":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            i += 1
        elif action == "grandchild":
            code = (
                "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                f"time.sleep({float(args[i + 1])})"
            )
            child = subprocess.Popen([sys.executable, "-c", code])  # inherits stdout
            print(f"grandchild {child.pid}", flush=True)
            i += 2
        elif action == "daemonize":
            seconds, path = float(args[i + 1]), args[i + 2]
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:  # the classic double fork: parented by init, or a subreaper
                    os.closerange(0, 1024)
                    with open(path, "w") as handle:
                        handle.write(str(os.getpid()))
                    time.sleep(seconds)
                os._exit(0)
            os.wait()
            while not os.path.exists(path) or not os.path.getsize(path):
                time.sleep(0.01)
            i += 3
        elif action == "fail-until":
            wanted, path = int(args[i + 1]), args[i + 2]
            count = 1
            if os.path.exists(path):
                with open(path) as handle:
                    count = int(handle.read() or 0) + 1
            with open(path, "w") as handle:
                handle.write(str(count))
            if count < wanted:
                print(f"failing on call {count}", flush=True)
                return 1
            i += 3
        elif action == "env":
            print(f"{args[i + 1]}={os.environ.get(args[i + 1], '')}", flush=True)
            i += 2
        elif action == "append":
            fd = os.open(args[i + 1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.write(fd, (args[i + 2] + "\n").encode())
            os.close(fd)
            i += 3
        else:
            print(f"fake_agent: unknown action {action!r}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

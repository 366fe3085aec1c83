"""PID 1 of a pod's shared PID namespace (`python -I -S pause.py`): it holds the namespace
open and reaps the orphans the pod's containers leave, as Kubernetes' pause does. Standard
library only: it runs once per such pod."""

import os
import signal
import sys


def main() -> int:
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    # Blocked and waited for: a SIGCHLD that arrives while reaping stays pending, not lost.
    # PID 1 has no default signal actions, so SIGTERM is waited for too.
    wanted = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
    while True:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        if signal.sigwait(wanted) != signal.SIGCHLD:
            return 0


if __name__ == "__main__":
    sys.exit(main())

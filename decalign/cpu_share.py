"""Share the CPU with a training process this server started.

Torch's OpenMP threads spin while they wait for each other. Two processes that each run two such threads
on two cores keep descheduling each other's partner thread, and both slow down by far more than half:
on this project's 2-core machine a demo epoch took 1.5 s alone and 34-105 s beside a busy 2-thread
torch loop (``bench/bench_dashboard.py --parts train`` measures the dashboard case). So while a training
process started by this server is alive, the server's page computations run on one torch thread, in a
script thread at a lower scheduling priority: the same busy loop at niceness 10 cost the demo epoch
about 10 %. The training process itself keeps the settings the command line uses.

Streamlit runs each script run in its own thread (a thread may serve a few reruns in a row), so the
niceness is set per thread and put back when no run is going where the system allows it (an
unprivileged process may raise its niceness but not lower it again; such a thread then stays polite).
"""

from __future__ import annotations

import os
import threading

TRAINING_NICE = 10
_default_threads: int | None = None


def share_with_training(training: bool) -> None:
    """Set the calling thread's torch threads and niceness for ``training`` (a run alive) or not."""
    import torch  # here, not at the top: importing this module stays light

    global _default_threads
    if _default_threads is None:
        _default_threads = torch.get_num_threads()
    wanted = 1 if training else _default_threads
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
    _set_thread_nice(TRAINING_NICE if training else 0)


def _set_thread_nice(nice: int) -> None:
    if not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, tid) != nice:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError:  # lowering the niceness needs a privilege: the thread stays at the higher one
        pass

"""Share the CPU with a training process this server started.

Torch's OpenMP threads spin while they wait for each other. Two processes that each run two such threads
on two cores keep descheduling each other's partner thread, and both slow down by far more than half:
on this project's 2-core machine a demo epoch took 1.5 s alone and 34-105 s beside a busy 2-thread
torch loop. So while a training process started by this server is alive, the server's page computations
run on one torch thread; the training process (``decalign train --share-cpu``) then sees that core busy
and trains on the other.

The torch thread count is set per script run, in the thread that runs it (Streamlit runs each script run
in a thread of its own). The thread's scheduling priority is left alone: a lower one also delayed the
Train page's own live view behind the run it shows.
"""

from __future__ import annotations

import sys

_default_threads: int | None = None


def share_with_training(training: bool) -> None:
    """Set the calling thread's torch threads for ``training`` (a run alive: one) or not (the default)."""
    if not training and "torch" not in sys.modules:
        return  # no thread can have changed torch's count, and a fresh server's first page needs no torch
    import torch  # here, not at the top: importing this module stays light

    global _default_threads
    if _default_threads is None:
        _default_threads = torch.get_num_threads()
    wanted = 1 if training else _default_threads
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)

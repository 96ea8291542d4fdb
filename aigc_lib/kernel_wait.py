"""Bounded waits for a kernel's messages, for the tools that execute notebooks with nbclient (the book
build, `benchmarks/chapter_timings.py`).

nbclient waits for a cell's reply with one `poll` of the shell socket for the cell's whole timeout.
Sometimes zmq.asyncio does not wake that poll for a reply that has already arrived (the root cause is
not established; pyzmq issue #2173 reports a similar symptom and was closed unconfirmed). The reply
then sits in the socket until the poll times out, which pyzmq ends with a last non-blocking check that
finds it: the cell costs its whole timeout (60 s in our reproduction; 30 minutes at the standard
budget in a book build, 2 hours at full), with no error. It happened after the messages of an
ipywidgets Output (chapter 08's interactive cell) in a few runs in a hundred. `install()` makes every
such wait a series of short polls, so a missed wake-up costs at most one slice; messages, timeouts
and `Empty` are otherwise unchanged.
"""

from __future__ import annotations

import functools
import time
from queue import Empty

SLICE_S = 0.5  # the longest a missed wake-up can delay a message
_LAST_LOOK_S = 0.001  # zmq polls in whole milliseconds: less than this left is one non-blocking look


def install(slice_s: float = SLICE_S) -> None:
    """Patch `jupyter_client`'s asyncio channels (what nbclient uses) in this process; idempotent."""
    from jupyter_client.channels import AsyncZMQSocketChannel

    if getattr(AsyncZMQSocketChannel.get_msg, "_aigc_sliced", False):
        return
    AsyncZMQSocketChannel.get_msg = sliced(AsyncZMQSocketChannel.get_msg, slice_s)


def sliced(get_msg, slice_s: float = SLICE_S):
    """`get_msg(self, timeout=None)` as polls of at most `slice_s` seconds until `timeout` (None or negative:
    until a message comes, as zmq's poll does)."""
    if not slice_s > 0:
        raise ValueError(f"slice_s: expected a positive number of seconds, got {slice_s!r}")

    @functools.wraps(get_msg)
    async def get_msg_in_slices(self, timeout: float | None = None):
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        while True:
            left = slice_s if deadline is None else deadline - time.monotonic()
            if left < _LAST_LOOK_S:
                return await get_msg(self, 0)  # the deadline: one last look, then Empty
            try:
                return await get_msg(self, min(slice_s, left))
            except Empty:
                continue

    get_msg_in_slices._aigc_sliced = True
    return get_msg_in_slices

"""Bounded waits for a kernel's messages, for the tools that execute notebooks with nbclient (the book
build, `benchmarks/chapter_timings.py`).

nbclient waits for a cell's reply with one `poll` of the shell socket for the cell's whole timeout.
zmq.asyncio can miss the wake-up of a message that has already arrived (its edge-triggered file
descriptor is drained by another call on the socket; pyzmq issue #2173): the reply then sits in the
socket until the poll times out, which pyzmq ends with a last non-blocking check that finds it. With
the chapters' ipywidgets Output (chapter 08's interactive cell) this cost nbclient its whole cell
timeout (60 s in a reproduction, up to 30 minutes in a book build) in a few runs in a hundred.
`install()` makes every such wait a series of short polls, so a missed wake-up costs at most one
slice; messages, timeouts and `Empty` are otherwise unchanged.
"""

from __future__ import annotations

import functools
import time
from queue import Empty

SLICE_S = 0.5  # the longest a missed wake-up can delay a message


def install(slice_s: float = SLICE_S) -> None:
    """Patch `jupyter_client`'s asyncio channels (what nbclient uses) in this process; idempotent."""
    from jupyter_client.channels import AsyncZMQSocketChannel

    if getattr(AsyncZMQSocketChannel.get_msg, "_aigc_sliced", False):
        return
    AsyncZMQSocketChannel.get_msg = sliced(AsyncZMQSocketChannel.get_msg, slice_s)


def sliced(get_msg, slice_s: float = SLICE_S):
    """`get_msg(self, timeout=None)` as polls of at most `slice_s` seconds until `timeout` (None: forever)."""
    if not slice_s > 0:
        raise ValueError(f"slice_s: expected a positive number of seconds, got {slice_s!r}")

    @functools.wraps(get_msg)
    async def get_msg_in_slices(self, timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            left = slice_s if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await get_msg(self, min(slice_s, left))
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    get_msg_in_slices._aigc_sliced = True
    return get_msg_in_slices

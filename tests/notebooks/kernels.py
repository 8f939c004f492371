"""The kernel manager the course's papermill runs use: its client's reads wake at least once a second.

pyzmq's asyncio poller waits on a socket's edge-triggered file descriptor; when that wake-up is missed, the poll only
sees the waiting message when its timeout fires (it checks the socket once more then). nbclient waits for a cell's
reply with one poll as long as the cell's whole timeout, so one missed wake-up held a finished one-second cell of
notebook 02 for the full 420 s in CI (its reply was read at exactly 420.0 s, and the notebook passed). Polling in
slices of a second bounds such a miss to a second.
"""

from __future__ import annotations

import time
from queue import Empty
from typing import Any

from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.channels import AsyncZMQSocketChannel
from jupyter_client.manager import AsyncKernelManager
from traitlets import DottedObjectName, Type

SLICE_S = 1.0


class SlicedPollChannel(AsyncZMQSocketChannel):
    async def get_msg(self, timeout: float | None = None) -> dict[str, Any]:  # type: ignore[override]
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = SLICE_S if deadline is None else min(SLICE_S, max(0.0, deadline - time.monotonic()))
            if await self.socket.poll(int(left * 1000)):
                return await self._recv()
            if deadline is not None and time.monotonic() >= deadline:
                raise Empty


class SlicedPollClient(AsyncKernelClient):
    shell_channel_class = Type(SlicedPollChannel)  # type: ignore[assignment]
    iopub_channel_class = Type(SlicedPollChannel)  # type: ignore[assignment]


class SlicedPollKernelManager(AsyncKernelManager):
    client_class = DottedObjectName("tests.notebooks.kernels.SlicedPollClient")
    client_factory = Type(SlicedPollClient, klass=AsyncKernelClient)

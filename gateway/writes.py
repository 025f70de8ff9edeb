"""Writes made in one event-loop turn leave in one ``send``: a response's head and body.

uvicorn writes the status line and headers when the app sends ``http.response.start``
and the body when it sends ``http.response.body``: two ``send`` system calls, two TCP
segments, for a response that was complete before either (the proxy's usual case, and
most apps'). On loopback and in most deployments the segment itself is what costs — each
one is carried through the receiver's TCP stack on the sender's CPU — and the profile of
the gateway (issue 16) had the head write alone at a sixth of its time.

:class:`CoalescedWrites` sits between uvicorn's request cycle and the transport: the
first write of a turn is held; a second write in the same turn goes out with it in one
``send`` at once; a write left alone goes out when the turn ends (``call_soon``), so a
streamed response is never held back beyond the turn that produced it. Everything else
(``close``, ``write_eof``, ``is_closing``, ...) flushes first, so no byte is reordered or
lost.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["CoalescedWrites"]

#: above this, two buffers are handed over as they are instead of joined.
_COPY_LIMIT = 16 * 1024


class CoalescedWrites:
    """A write-coalescing view of ``transport`` (see the module docstring)."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is None:
            if not data:
                return
            self._held = data
            self._loop.call_soon(self.flush)
            return
        # The second write of the turn (the body after the head): both in one send.
        self._held = None
        if len(data) > _COPY_LIMIT:
            self._transport.writelines((held, data))  # one writev, no copy of a big body
        else:
            self._transport.write(held + data)

    def write_now(self, data: bytes) -> None:
        """Whatever is held, then ``data``, in one send now (a response already whole)."""
        held = self._held
        if held is None:
            self._transport.write(data)
        else:
            self._held = None
            self._transport.write(held + data)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            # The peer may have gone since the write was held (uvloop raises on a closed
            # transport where asyncio's own only logs).
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    def __getattr__(self, name: str) -> Any:
        # Anything else uvicorn's cycle might use (get_extra_info, ...): the transport's.
        return getattr(self._transport, name)

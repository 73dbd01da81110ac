"""uvicorn's HTTP protocol with a deadline for the request head.

uvicorn times out an idle keep-alive connection only after it has answered a request on
it; a connection that opens and then sends its head a byte at a time (slowloris) or
nothing at all is held forever, one socket each. Here every connection must deliver a
whole request head within `header_timeout` seconds of opening, or of its last answer.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _BoundedHttpTools(HttpToolsProtocol):
    header_timeout: float = 15.0
    _head_deadline: asyncio.TimerHandle | None = None

    def _arm_head_deadline(self) -> None:
        self._disarm_head_deadline()
        self._head_deadline = self.loop.call_later(self.header_timeout, self._head_too_slow)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if self.cycle is None or self.cycle.response_complete:  # between requests, or before the first
            if not self.transport.is_closing():
                self.transport.close()

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_deadline is None:  # a keep-alive connection's next request: a new deadline
            self._arm_head_deadline()

    def on_headers_complete(self) -> None:
        self._disarm_head_deadline()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)


def bounded_http_protocol(header_timeout: float) -> type[HttpToolsProtocol]:
    """The protocol class to pass to uvicorn as `http=`."""
    return type("BoundedHttpTools", (_BoundedHttpTools,), {"header_timeout": header_timeout})

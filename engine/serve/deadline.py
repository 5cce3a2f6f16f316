"""uvicorn's h11 protocol with a read deadline: a request must arrive whole, headers and body, within
`timeout` seconds of its first byte (or of the connection, when it sends nothing), or the connection is answered
408 and closed. uvicorn only times out idle keep-alive connections, and any byte resets that timer."""

from __future__ import annotations

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

READING = (h11.IDLE, h11.SEND_BODY)  # the client's side while its request is not yet whole
TIMEOUT_BODY = b"the request did not arrive whole in time\n"
TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\nconnection: close\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(TIMEOUT_BODY), TIMEOUT_BODY))


def deadline_protocol(timeout: float) -> type[H11Protocol]:
    """The protocol class uvicorn.Config(http=...) takes, with a read deadline of `timeout` seconds."""

    # written here because neither uvicorn nor h11 bound the time a request takes to arrive (slowloris)
    class DeadlineH11Protocol(H11Protocol):
        read_deadline = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.arm()

        def data_received(self, data: bytes) -> None:
            if self.read_deadline is None and self.conn.their_state is h11.IDLE:
                self.arm()  # the first byte of the next request on a kept-alive connection
            super().data_received(data)
            if self.conn.their_state not in READING:
                self.disarm()  # the request is whole: the response may take as long as the model needs

        def connection_lost(self, exc) -> None:
            self.disarm()
            super().connection_lost(exc)

        def arm(self) -> None:
            self.disarm()
            self.read_deadline = self.loop.call_later(timeout, self.too_slow)

        def disarm(self) -> None:
            if self.read_deadline is not None:
                self.read_deadline.cancel()
                self.read_deadline = None

        def too_slow(self) -> None:
            self.read_deadline = None
            if self.transport.is_closing() or self.conn.their_state not in READING:
                return
            if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):  # nothing of a response was sent yet
                self.transport.write(TIMEOUT_RESPONSE)
            self.transport.close()

    return DeadlineH11Protocol

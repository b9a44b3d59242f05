"""The data phase of one association, inbound or outbound, owned by one thread.

Why one thread: pynetdicom splits every association between a DUL thread (socket, PDUs) and an
association thread (DIMSE), so each message crosses a queue and a thread wake-up in each
direction, and both threads contend for the GIL. Here the thread that reads a request also
decodes it, calls the service, frames the response and writes it: no hand-off per message.

Receiving: PDUs are read with a deadline (edge/dimse/link.py); PDV fragments of a command are
collected (a command set is small), fragments of a dataset go to a sink chosen by the caller
when the command is complete: a spool file for a C-STORE (straight from the socket buffer to
the file), memory (bounded) for identifiers. Anything that breaks PS3.8 raises ProtocolError
and the caller aborts.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from edge.dimse import command as cmd
from edge.dimse import pdu
from edge.dimse.dataset import MAX_IDENTIFIER_BYTES
from edge.dimse.link import Link, LinkClosed, LinkTimeout
from edge.dimse.negotiation import Context

log = logging.getLogger("hpacs.edge.dimse")


class PeerAborted(Exception):
    """The peer sent an A-ABORT."""


class PeerReleasing(LinkClosed):
    """The peer asked to release while we waited for a response (the release is queued for
    the service loop, which answers it)."""


class Sink(Protocol):
    def write(self, data: memoryview) -> None: ...
    def finish(self) -> None: ...
    def discard(self) -> None: ...


class MemorySink:
    """A small dataset (identifier, event information) collected in memory, bounded."""

    def __init__(self, limit: int = MAX_IDENTIFIER_BYTES) -> None:
        self.limit = limit
        self.data = bytearray()

    def write(self, data: memoryview) -> None:
        if len(self.data) + len(data) > self.limit:
            raise pdu.ProtocolError(f"message dataset over {self.limit} bytes")
        self.data += data

    def finish(self) -> None:
        pass

    def discard(self) -> None:
        self.data = bytearray()


SinkFor = Callable[[Context, cmd.Command], Sink | None]


@dataclass
class Message:
    context: Context
    command: cmd.Command
    sink: Any = None  # the sink that took the dataset, if one followed

    @property
    def data(self) -> bytes:
        """The dataset of a message received into memory (b"" without one)."""
        return bytes(self.sink.data) if isinstance(self.sink, MemorySink) else b""


RELEASE = object()  # receive() result: the peer asked to release


class Association:
    """One association's data phase. `contexts` are the accepted ones by ID."""

    def __init__(
        self,
        link: Link,
        contexts: dict[int, Context],
        *,
        peer_max_pdu: int,
        our_max_pdu: int,
        idle_timeout_s: float,
        dimse_timeout_s: float,
        calling_ae: str = "",
        called_ae: str = "",
    ) -> None:
        self.link = link
        self.contexts = contexts
        self.peer_max_pdu = peer_max_pdu
        self.our_max_pdu = our_max_pdu
        self.idle_timeout_s = idle_timeout_s
        self.dimse_timeout_s = dimse_timeout_s
        self.calling_ae = calling_ae
        self.called_ae = called_ae
        self.info: Any = None  # edge.assoc.AssocInfo on inbound associations
        self._pdvs: collections.deque[tuple[int, int, bytes]] = collections.deque()
        self._queue: collections.deque[Any] = collections.deque()
        self._cmd = bytearray()
        self._cmd_ctx = -1
        self._command: cmd.Command | None = None
        self._sink: Any = None
        self._cancels: set[int] = set()
        self._message_id = 0
        self.release_requested = False
        self.ended = False
        # Where datasets go when a caller does not say (set by the service loop, so a message
        # read while waiting for something else, e.g. a C-STORE during a commitment grace, is
        # spooled like any other, never buffered in memory).
        self.sink_for: SinkFor | None = None

    # ---- receiving -----------------------------------------------------------------------
    def receive(self, timeout_s: float | None = None, sink_for: SinkFor | None = None) -> Any:
        """The next complete Message, or RELEASE. Raises PeerAborted, ProtocolError,
        cmd.CommandError, LinkClosed or LinkTimeout (no message started in `timeout_s`)."""
        if self._queue:
            return self._queue.popleft()
        sink_for = sink_for or self.sink_for
        first = True
        while True:
            while self._pdvs:
                done = self._feed(*self._pdvs.popleft(), sink_for)
                if done is not None:
                    return done
            wait = timeout_s if first and self._command is None else self.dimse_timeout_s
            first = False
            kind, body = self.link.read_pdu(self.our_max_pdu, wait)
            if kind == pdu.P_DATA_TF:
                items = list(pdu.pdvs(body))
                for n, item in enumerate(items):
                    done = self._feed(*item, sink_for)
                    if done is not None:
                        self._pdvs.extend((c, ctl, bytes(d)) for c, ctl, d in items[n + 1 :])
                        return done
                continue
            self._drop_partial()
            if kind == pdu.A_RELEASE_RQ:
                self.release_requested = True
                return RELEASE
            if kind == pdu.A_ABORT:
                raise PeerAborted("the peer aborted the association")
            raise pdu.ProtocolError(f"unexpected PDU type 0x{kind:02X}", pdu.REASON_UNEXPECTED_PDU)

    def _feed(self, cx_id: int, control: int, data: Any, sink_for: SinkFor | None) -> Any:
        cx = self.contexts.get(cx_id)
        if cx is None:
            raise pdu.ProtocolError(f"PDV for presentation context {cx_id}, not accepted")
        if control & pdu.COMMAND:
            if self._command is not None or (self._cmd and cx_id != self._cmd_ctx):
                raise pdu.ProtocolError("command fragment inside another message")
            self._cmd_ctx = cx_id
            self._cmd += data
            if len(self._cmd) > cmd.MAX_COMMAND_BYTES:
                raise pdu.ProtocolError("command set too long")
            if not control & pdu.LAST:
                return None
            command = cmd.decode(self._cmd)
            self._cmd = bytearray()
            if not command.has_dataset:
                self._cmd_ctx = -1
                return Message(cx, command)
            self._command = command
            self._sink = (sink_for(cx, command) if sink_for else None) or MemorySink()
            return None
        if self._command is None or cx_id != self._cmd_ctx:
            raise pdu.ProtocolError("dataset fragment without its command")
        self._sink.write(data)
        if not control & pdu.LAST:
            return None
        message = Message(cx, self._command, self._sink)
        self._sink.finish()
        self._command, self._sink, self._cmd_ctx = None, None, -1
        return message

    def _drop_partial(self) -> None:
        if self._sink is not None:
            self._sink.discard()
        self._command, self._sink, self._cmd, self._cmd_ctx = None, None, bytearray(), -1

    def wait_response(self, message_id: int, timeout_s: float | None = None) -> Message:
        """Read until the response to our request `message_id`; a C-CANCEL seen meanwhile is
        remembered, other requests are queued for the caller's next receive()."""
        while True:
            item = self.receive(timeout_s or self.dimse_timeout_s)
            if item is RELEASE:
                self._queue.append(RELEASE)
                raise PeerReleasing("the peer released while a response was due")
            if item.command.field & cmd.RESPONSE_BIT:
                if item.command.responding_to == message_id:
                    return item  # type: ignore[no-any-return]
                continue  # a late response to something we gave up on
            if item.command.field == cmd.C_CANCEL_RQ:
                self._cancels.add(item.command.responding_to)
                continue
            self._queue.append(item)

    def requeue(self, item: Any) -> None:
        """Give a received message (or RELEASE) back: the next receive() returns it first."""
        self._queue.appendleft(item)

    def cancelled(self, message_id: int) -> bool:
        """Whether the peer sent C-CANCEL for `message_id` (never blocks)."""
        while message_id not in self._cancels and self.link.readable(0):
            item = self.receive(self.dimse_timeout_s)
            if item is RELEASE:
                self._cancels.add(message_id)  # releasing mid-operation: stop the operation
                self._queue.append(RELEASE)
            elif item.command.field == cmd.C_CANCEL_RQ:
                self._cancels.add(item.command.responding_to)
            else:
                self._queue.append(item)
        return message_id in self._cancels

    # ---- sending -------------------------------------------------------------------------
    def context_for(self, cx_id: int) -> Context:
        return self.contexts[cx_id]

    def next_message_id(self) -> int:
        self._message_id = self._message_id % 0xFFFF + 1
        return self._message_id

    def send(self, cx_id: int, command: bytes, dataset: bytes | None = None) -> None:
        self.link.send(
            pdu.message(cx_id, command, dataset, self.peer_max_pdu), self.dimse_timeout_s
        )

    def send_bytes(self, data: bytes | memoryview) -> None:
        """Already framed PDUs (a C-STORE of a cached file, a batch of C-FIND responses)."""
        self.link.send(data, self.dimse_timeout_s)

    def send_parts(self, parts: list[Any]) -> None:
        """Framed PDUs as a list of buffers (headers and slices of an object), written with
        scatter-gather I/O where the socket allows it: no copy of a large object."""
        self.link.send_parts(parts, self.dimse_timeout_s)

    def frame(self, cx_id: int, data: bytes | memoryview, command: bool, out: list[Any]) -> None:
        pdu.frame(cx_id, data, self.peer_max_pdu, command, out)

    # ---- ending --------------------------------------------------------------------------
    def reply_release(self) -> None:
        try:
            self.link.send(pdu.release_rp(), 5.0)
        except (LinkClosed, LinkTimeout):
            pass
        self.close()

    def abort(
        self, reason: int = pdu.REASON_NOT_SPECIFIED, source: int = pdu.ABORT_PROVIDER
    ) -> None:
        if not self.link.closed:
            try:
                self.link.send(pdu.abort(source, reason), 2.0)
            except (LinkClosed, LinkTimeout):
                pass
        self.close()

    def release(self, timeout_s: float = 10.0) -> None:
        """Release an association we requested: A-RELEASE-RQ, then wait for the RP."""
        try:
            self.link.send(pdu.release_rq(), timeout_s)
            while True:
                kind, _ = self.link.read_pdu(self.our_max_pdu, timeout_s)
                if kind in (pdu.A_RELEASE_RP, pdu.A_ABORT):
                    break
                if kind == pdu.A_RELEASE_RQ:  # release collision (PS3.8 7.2.2): requestor answers
                    self.link.send(pdu.release_rp(), timeout_s)
                    break
        except (LinkClosed, LinkTimeout, pdu.ProtocolError):
            pass
        except Exception:  # the link's TooLarge and the like: we are leaving anyway
            log.debug("release of %s ended abnormally", self.link.peer, exc_info=True)
        self.close()

    def close(self) -> None:
        self._drop_partial()
        self.ended = True
        self.link.close()

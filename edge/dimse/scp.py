"""The service loop of an inbound association: read a request, call its service, repeat.

Every request gets a response or the association an abort: a handler that raises is answered
with a failure status (and logged once with its traceback, since that is a bug of ours); a
request we do not serve is answered 0x0211 (unrecognised operation); malformed PDUs or command
sets end in an A-ABORT. The loop ends on release, abort, an idle timeout or server stop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from edge.dimse import command as cmd
from edge.dimse import pdu
from edge.dimse.engine import RELEASE, Association, Message, PeerAborted, Sink
from edge.dimse.link import LinkClosed, LinkTimeout, TooLarge
from edge.dimse.negotiation import Context

log = logging.getLogger("hpacs.edge.dimse")

UNRECOGNIZED_OPERATION = 0x0211
PROCESSING_FAILURE = 0x0110
CANNOT_UNDERSTAND = 0xC000

Handler = Callable[[Association, Message], None]
SinkFor = Callable[[Association, Context, cmd.Command], Sink | None]


@dataclass
class Services:
    """Handlers by Command Field of the request, and the sink chooser for datasets."""

    handlers: Mapping[int, Handler]
    sink_for: SinkFor | None = None


def run(assoc: Association, services: Services, stopping: Callable[[], bool]) -> str:
    """Serve until the association ends; returns how it ended (for the closing log line)."""
    sink_for = services.sink_for

    def choose(cx: Context, command: cmd.Command) -> Sink | None:
        return sink_for(assoc, cx, command) if sink_for is not None else None

    assoc.sink_for = choose

    while True:
        if stopping():
            assoc.abort()
            return "server stopping"
        try:
            item = assoc.receive(assoc.idle_timeout_s, choose)
        except LinkTimeout:
            if stopping():
                assoc.abort()
                return "server stopping"
            assoc.abort()
            return f"idle for {assoc.idle_timeout_s:g} s (edge.network_timeout_s): aborted"
        except PeerAborted:
            assoc.close()
            return "aborted by the peer"
        except LinkClosed as exc:
            assoc.close()
            return "server stopping" if stopping() else f"connection lost ({exc})"
        except TooLarge as exc:
            assoc.abort(pdu.REASON_INVALID_PARAMETER)
            return f"aborted: {exc}"
        except (pdu.ProtocolError, cmd.CommandError) as exc:
            reason = (
                exc.reason if isinstance(exc, pdu.ProtocolError) else pdu.REASON_INVALID_PARAMETER
            )
            assoc.abort(reason)
            return f"aborted: protocol error: {exc}"
        if item is RELEASE:
            assoc.reply_release()
            return "released"
        ended = _dispatch(assoc, services, item)
        if ended:
            return ended


def _dispatch(assoc: Association, services: Services, msg: Message) -> str:
    field = msg.command.field
    if field & cmd.RESPONSE_BIT or field == cmd.C_CANCEL_RQ:
        return ""  # a late response or a cancel of something already finished
    handler = services.handlers.get(field)
    try:
        if handler is None:
            _discard(msg)
            assoc.send(msg.context.id, cmd.failure_rsp(msg.command, UNRECOGNIZED_OPERATION))
            return ""
        handler(assoc, msg)
    except (LinkClosed, LinkTimeout) as exc:
        assoc.close()
        return f"connection lost ({exc})"
    except PeerAborted:
        assoc.close()
        return "aborted by the peer"
    except (pdu.ProtocolError, cmd.CommandError, TooLarge) as exc:
        assoc.abort(pdu.REASON_INVALID_PARAMETER)
        return f"aborted: protocol error: {exc}"
    except Exception:
        log.exception(
            "service failed calling_ae=%s command=0x%04X", assoc.calling_ae, msg.command.field
        )
        _discard(msg)
        try:
            status = CANNOT_UNDERSTAND if field != cmd.N_ACTION_RQ else PROCESSING_FAILURE
            assoc.send(msg.context.id, cmd.failure_rsp(msg.command, status))
        except (LinkClosed, LinkTimeout):
            assoc.close()
            return "connection lost"
    return ""


def _discard(msg: Message) -> None:
    if msg.sink is not None:
        msg.sink.discard()

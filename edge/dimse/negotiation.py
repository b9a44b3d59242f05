"""Association negotiation through pynetdicom's public API: its PDU classes decode and encode
A-ASSOCIATE-RQ/AC, its presentation-context negotiation decides contexts and roles. What it
does well, used as it is; the data phase is ours (edge/dimse/engine.py).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import (
    PresentationContext,
    build_context,
    negotiate_as_acceptor,
    negotiate_as_requestor,
    negotiate_unrestricted,
)

from edge.dimse.pdu import ProtocolError

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLEMENTATION_UID = str(PYNETDICOM_IMPLEMENTATION_UID)
IMPLEMENTATION_VERSION = str(PYNETDICOM_IMPLEMENTATION_VERSION)
# Largest A-ASSOCIATE-RQ we read before authentication: 128 contexts of 14 syntaxes with role
# items take ~60 KB; anything larger is aborted before it is buffered.
MAX_ASSOCIATE_RQ_BYTES = 256 * 1024

Roles = dict[Any, tuple[bool | None, bool | None]]  # SOP Class UID -> (SCU, SCP)


@dataclass(frozen=True)
class Context:
    """An accepted presentation context; `as_scu`/`as_scp` are *our* roles on it."""

    id: int
    abstract_syntax: str
    transfer_syntax: str
    as_scu: bool
    as_scp: bool


@dataclass
class Request:
    """What an A-ASSOCIATE-RQ asks for."""

    calling_ae: str
    called_ae: str
    contexts: list[PresentationContext]
    roles: Roles = field(default_factory=dict)
    max_pdu: int = 0  # the requestor's Maximum Length Received (0: unlimited)
    implementation_uid: str = ""
    implementation_version: str = ""
    async_ops: bool = False


def _user_items(items: Any) -> list[Any]:
    return list(items or [])


def decode_request(data: bytes) -> Request:
    """Decode a whole A-ASSOCIATE-RQ PDU (header included); raises ProtocolError."""
    try:
        pdu = A_ASSOCIATE_RQ()
        pdu.decode(data)
        prim = pdu.to_primitive()
        contexts = list(prim.presentation_context_definition_list)
        req = Request(
            calling_ae=str(prim.calling_ae_title or "").strip(),
            called_ae=str(prim.called_ae_title or "").strip(),
            contexts=contexts,
        )
        for item in _user_items(prim.user_information):
            if isinstance(item, MaximumLengthNotification):
                req.max_pdu = int(item.maximum_length_received or 0)
            elif isinstance(item, ImplementationClassUIDNotification):
                req.implementation_uid = str(item.implementation_class_uid or "")
            elif isinstance(item, ImplementationVersionNameNotification):
                req.implementation_version = str(item.implementation_version_name or "")
            elif isinstance(item, SCP_SCU_RoleSelectionNegotiation):
                req.roles[str(item.sop_class_uid)] = (item.scu_role, item.scp_role)
            elif isinstance(item, AsynchronousOperationsWindowNegotiation):
                req.async_ops = True
    except ProtocolError:
        raise
    except Exception as exc:  # pynetdicom raises assorted errors for malformed items
        raise ProtocolError(f"malformed A-ASSOCIATE-RQ: {type(exc).__name__}: {exc}") from exc
    for cx in contexts:
        if cx.context_id is None or not cx.abstract_syntax or not cx.transfer_syntax:
            raise ProtocolError("presentation context without ID, abstract or transfer syntax")
    return req


def supported_context(abstract: str, syntaxes: list[str], scu_scp: bool = False) -> Any:
    """One context we accept; `scu_scp` accepts role selection (C-GET, commitment reports)."""
    cx = build_context(abstract, syntaxes)
    if scu_scp:
        cx.scu_role = True
        cx.scp_role = True
    return cx


def accept(
    req: Request, supported: list[Any], unrestricted_storage: bool, our_max_pdu: int
) -> tuple[bytes, dict[int, Context]]:
    """The A-ASSOCIATE-AC PDU for `req` and the accepted contexts by ID."""
    negotiate = negotiate_unrestricted if unrestricted_storage else negotiate_as_acceptor
    results, reply_roles = negotiate(req.contexts, supported, req.roles or None)
    prim = A_ASSOCIATE()
    prim.application_context_name = APPLICATION_CONTEXT
    prim.calling_ae_title = req.calling_ae or "ANY-SCU"
    prim.called_ae_title = req.called_ae or "ANY-SCP"
    prim.result = 0x00
    prim.result_source = 0x01
    prim.presentation_context_definition_results_list = results
    user: list[Any] = _identity(our_max_pdu)
    user.extend(reply_roles)
    if req.async_ops:  # we perform one operation at a time (PS3.7 D.3.3.3)
        window = AsynchronousOperationsWindowNegotiation()
        window.maximum_number_operations_invoked = 1
        window.maximum_number_operations_performed = 1
        user.append(window)
    prim.user_information = user
    pdu = A_ASSOCIATE_AC()
    pdu.from_primitive(prim)
    accepted = {c.id: c for c in map(_context, results) if c is not None}
    return pdu.encode(), accepted


def _context(cx: PresentationContext) -> Context | None:
    """Ours, from one of pynetdicom's negotiated contexts; None unless accepted."""
    if cx.result != 0x00 or cx.context_id is None or not cx.transfer_syntax:
        return None
    return Context(
        cx.context_id,
        str(cx.abstract_syntax),
        str(cx.transfer_syntax[0]),
        bool(cx.as_scu),
        bool(cx.as_scp),
    )


def _identity(max_pdu: int) -> list[Any]:
    length = MaximumLengthNotification()
    length.maximum_length_received = max_pdu
    impl = ImplementationClassUIDNotification()
    impl.implementation_class_uid = IMPLEMENTATION_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = IMPLEMENTATION_VERSION
    return [length, impl, version]


# ---- as requestor -----------------------------------------------------------------------------
def request(
    calling_ae: str,
    called_ae: str,
    wanted: list[tuple[str, list[str]]],
    roles: Roles | None = None,
    max_pdu: int = 0,
) -> tuple[bytes, list[Any]]:
    """An A-ASSOCIATE-RQ proposing `wanted` (abstract syntax, transfer syntaxes) in order;
    `roles` proposes SCU/SCP roles per SOP class. Returns the PDU and the proposed contexts."""
    contexts = []
    for cx_id, (abstract, syntaxes) in zip(itertools.count(1, 2), wanted, strict=False):
        if cx_id > 255:
            raise ValueError("at most 128 presentation contexts per association")
        cx = build_context(abstract, syntaxes)
        cx.context_id = cx_id
        scu, scp = (roles or {}).get(abstract, (None, None))
        cx.scu_role, cx.scp_role = scu, scp
        contexts.append(cx)
    prim = A_ASSOCIATE()
    prim.application_context_name = APPLICATION_CONTEXT
    prim.calling_ae_title = calling_ae
    prim.called_ae_title = called_ae
    prim.presentation_context_definition_list = contexts
    user = _identity(max_pdu)
    for abstract, (scu, scp) in (roles or {}).items():
        item = SCP_SCU_RoleSelectionNegotiation()
        item.sop_class_uid = abstract
        item.scu_role = bool(scu)
        item.scp_role = bool(scp)
        user.append(item)
    prim.user_information = user
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(prim)
    return pdu.encode(), contexts


def decode_accept(data: bytes, proposed: list[Any]) -> tuple[dict[int, Context], int]:
    """Accepted contexts (our roles as requestor) and the acceptor's maximum PDU length."""
    try:
        pdu = A_ASSOCIATE_AC()
        pdu.decode(data)
        prim = pdu.to_primitive()
        roles: Roles = {}
        peer_max = 0
        for item in _user_items(prim.user_information):
            if isinstance(item, MaximumLengthNotification):
                peer_max = int(item.maximum_length_received or 0)
            elif isinstance(item, SCP_SCU_RoleSelectionNegotiation):
                roles[str(item.sop_class_uid)] = (item.scu_role, item.scp_role)
        results = negotiate_as_requestor(
            proposed, list(prim.presentation_context_definition_results_list), roles or None
        )
    except Exception as exc:
        raise ProtocolError(f"malformed A-ASSOCIATE-AC: {type(exc).__name__}: {exc}") from exc
    accepted = {c.id: c for c in map(_context, results) if c is not None}
    return accepted, peer_max


def decode_reject(data: bytes) -> tuple[int, int, int]:
    """(result, source, reason) of an A-ASSOCIATE-RJ."""
    pdu = A_ASSOCIATE_RJ()
    pdu.decode(data)
    return int(pdu.result or 0), int(pdu.source or 0), int(pdu.reason_diagnostic or 0)

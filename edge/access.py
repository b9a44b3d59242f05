"""Association admission: a pure decision from the registry entry, the address and the counts."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from edge.assoc import AssocInfo
from shared.registry import Node

log = logging.getLogger("hpacs.edge.store")

# A-ASSOCIATE-RJ (result, source, reason) triples, PS3.8 9.3.4.
RJ_CALLING_AE_NOT_RECOGNIZED = (0x01, 0x01, 0x03)
RJ_CALLED_AE_NOT_RECOGNIZED = (0x01, 0x01, 0x07)
RJ_LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)


@dataclass(frozen=True)
class Decision:
    accept: bool
    reason: str = ""
    reject: tuple[int, int, int] = (0, 0, 0)


def host_matches(node_host: str, peer_ip: str, resolved: frozenset[str]) -> bool:
    """`*` admits any address; otherwise the peer must be one of the node's addresses."""
    if node_host == "*":
        return True
    try:
        peer = ipaddress.ip_address(peer_ip)
    except ValueError:
        return False
    candidates = set(resolved) | {node_host}
    for c in candidates:
        try:
            if ipaddress.ip_address(c) == peer:
                return True
        except ValueError:
            continue
    # IPv4-mapped IPv6 peers (::ffff:127.0.0.1)
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        return host_matches(node_host, str(peer.ipv4_mapped), resolved)
    return False


def decide(
    *,
    node: Node | None,
    calling_ae: str,
    called_ae: str,
    our_ae: str,
    check_called_ae: bool,
    peer_ip: str,
    node_addresses: frozenset[str],
    active_total: int,
    max_total: int,
    active_for_node: int,
) -> Decision:
    if check_called_ae and called_ae.strip() != our_ae.strip():
        return Decision(False, f"called AE {called_ae!r} is not ours", RJ_CALLED_AE_NOT_RECOGNIZED)
    if node is None:
        return Decision(False, "unknown calling AE", RJ_CALLING_AE_NOT_RECOGNIZED)
    if not host_matches(node.host, peer_ip, node_addresses):
        return Decision(
            False,
            f"address {peer_ip} is not the node's ({node.host})",
            RJ_CALLING_AE_NOT_RECOGNIZED,
        )
    if active_total >= max_total:
        return Decision(
            False, f"global association limit {max_total} reached", RJ_LOCAL_LIMIT_EXCEEDED
        )
    if node.max_associations and active_for_node >= node.max_associations:
        return Decision(
            False,
            f"node association limit {node.max_associations} reached",
            RJ_LOCAL_LIMIT_EXCEEDED,
        )
    return Decision(True)


def permitted(info: AssocInfo, permission: str) -> bool:
    """Whether the association's node may use a service; logs a refusal (one WARNING line)."""
    if info.node is not None and info.node.may(permission):
        return True
    log.warning(
        "service refused calling_ae=%s peer=%s service=%s reason=not permitted",
        info.calling_ae,
        info.peer,
        permission,
    )
    return False

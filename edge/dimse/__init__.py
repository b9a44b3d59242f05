"""hpacs's own DIMSE layer (docs/ARCHITECTURE.md, "DIMSE layer").

- `pdu`, `command`, `dataset`: pure codecs (PDU framing and fragmentation, command sets with
  `struct`, identifiers through pydicom's public reader/writer). No I/O.
- `negotiation`: A-ASSOCIATE-RQ/AC/RJ through pynetdicom's public PDU classes and its public
  presentation-context negotiation.
- `link`: one socket with a deadline on every read.
- `engine`: the data phase of one association, inbound or outbound, owned by one thread.
- `acceptor`: listeners, the unauthenticated phase (ARTIM, caps, TLS handshakes), admission.
- `client`: outbound associations (C-MOVE sub-operations, routing, commitment call-backs).
"""

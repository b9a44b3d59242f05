"""The DIMSE server: pynetdicom adapter for admission, per-association bookkeeping and handlers.

Threading model: pynetdicom runs each association in its own threads; the DIMSE path stays
synchronous on the stdlib sqlite3 (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import logging
import socket
import ssl
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pydicom import config as pydicom_config
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.events import EventHandlerType
from pynetdicom.transport import ThreadedAssociationServer

from edge import reactor, spool
from edge.access import RJ_LOCAL_LIMIT_EXCEEDED, Decision, decide
from edge.assoc import AssocInfo, assoc_info
from edge.cache import Cache
from edge.commitment import COMMITMENT_SOP_CLASS, CommitmentHandlers
from edge.contexts import ALL_TRANSFER_SYNTAXES, STORAGE_SOP_CLASSES, VERIFICATION
from edge.find import FIND_SOP_CLASSES, FindHandlers
from edge.handlers import StoreHandlers
from edge.ingest import Ingestor
from edge.locate import Recaller
from edge.recall import StoreRecaller
from edge.retrieve import GET_SOP_CLASSES, MOVE_SOP_CLASSES, RetrieveHandlers
from edge.slots import AssocSlots
from edge.tls import server_context
from shared import metrics
from shared.config import Config
from shared.index import Database
from shared.registry import get_node
from shared.store import open_store

log = logging.getLogger("hpacs.edge.server")

# Receive C-STORE datasets straight to a file instead of memory (large objects).
_config.STORE_RECV_CHUNKED_DATASET = True
# Private and future storage SOP classes are stored like the standard ones.
_config.UNRESTRICTED_STORAGE_SERVICE = True
# pynetdicom's "standard" handlers format every DIMSE message for its debug log on every
# C-STORE (CPU on the ingest path, and identifiers with PHI); we log one line per association.
_config.LOG_HANDLER_LEVEL = "none"
# pydicom re-validates every UID/value it reads with regular expressions only to warn (~10% of
# the CPU per instance); ingest validates what it indexes itself (shared.uids.is_valid_uid).
pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
# pynetdicom logs every C-FIND/MOVE/GET request and response identifier (patient names and IDs)
# at INFO/DEBUG, formatting each one even when the level is off: no PHI in logs, no wasted CPU.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False
# A full disk while a dataset arrives answers 0xA700 instead of killing the DUL thread.
spool.install()
# pynetdicom's reactor sleeps this long between polls; 1 ms caps throughput (NOTES.md).
DUL_LOOP_DELAY_S = 0.0001


def _stop_awaiting_request(assoc: Association) -> None:
    """End an acceptor thread still waiting for its A-ASSOCIATE-RQ.

    pynetdicom's acceptor blocks on the DUL's to_user_queue for `acse_timeout` (60 s) even when
    the connection has closed before any request (a port probe) or the server is stopping;
    a None there is its own "no request came" path: kill the DUL, close the socket, return.
    Without it every probe held a thread for a minute and stop() waited 10 s for it.
    """
    if assoc.is_acceptor and assoc.requestor.primitive is None and assoc.dul.to_user_queue.empty():
        assoc.dul.to_user_queue.put(None)


class _ReusePortServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with SO_REUSEPORT set before bind (edge.acceptors > 1)."""

    def server_bind(self) -> None:
        assert self.socket is not None  # socketserver created it in __init__
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class EdgeServer:
    """The DIMSE side of one process; `reuse_port` lets several acceptor processes share a port."""

    def __init__(self, cfg: Config, db: Database, *, reuse_port: bool = False) -> None:
        self.cfg = cfg
        self.db = db
        self.reuse_port = reuse_port
        self.cache = Cache(cfg.edge.cache_dir)
        tempfile.tempdir = str(self.cache.tmp)  # pynetdicom spools C-STORE data here
        self.ingestor = Ingestor(
            db,
            self.cache,
            duplicates=cfg.edge.duplicates,
            min_free_bytes=cfg.edge.min_free_bytes,
            max_object_bytes=cfg.edge.max_object_bytes,
        )
        if cfg.edge.index_synchronous == "normal":
            db.set_synchronous("NORMAL")  # edge.index_synchronous, docs/ARCHITECTURE.md
        self.ae = self._make_ae()
        self._servers: list[Any] = []
        # Association limits hold across acceptor processes (edge/slots.py).
        self.slots = AssocSlots(
            Path(cfg.edge.data_dir) / "associations.slots", cfg.edge.max_associations
        )
        self._addr_cache: dict[str, tuple[float, frozenset[str]]] = {}
        self.store = StoreHandlers(self)
        self.find = FindHandlers(self)
        # Read-through recall of evicted instances (edge/recall.py; the store opens on first use).
        sc = cfg.sync
        self.recaller: Recaller | None = StoreRecaller(
            db,
            self.cache,
            lambda: open_store(
                sc.store_url, emulator_host=sc.emulator_host, timeout_s=sc.upload_timeout_s
            ),
            concurrency=sc.recall_concurrency,
        )
        self.retrieve = RetrieveHandlers(self)
        self.commitment = CommitmentHandlers(self)
        self.extra_handlers: list[EventHandlerType] = []

    # ---- set-up ------------------------------------------------------------------------
    def _make_ae(self) -> AE:
        e = self.cfg.edge
        ae = AE(ae_title=e.ae_title)
        ae.maximum_associations = e.max_associations + 8  # our own check answers first
        ae.maximum_pdu_size = e.max_pdu_bytes
        ae.acse_timeout = e.association_timeout_s
        ae.dimse_timeout = e.dimse_timeout_s
        ae.network_timeout = e.network_timeout_s
        ae.require_called_aet = False  # decided in _on_requested, with a log line
        ae.add_supported_context(VERIFICATION, ALL_TRANSFER_SYNTAXES[:3])
        for uid in STORAGE_SOP_CLASSES:
            # Role selection accepted so C-GET peers can take the storage SCP role.
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
        for uid in FIND_SOP_CLASSES:
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES[:3])
        for uid in MOVE_SOP_CLASSES + GET_SOP_CLASSES:
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES[:3])
        ae.add_supported_context(
            COMMITMENT_SOP_CLASS, ALL_TRANSFER_SYNTAXES[:3], scu_role=True, scp_role=True
        )
        return ae

    def handlers(self) -> list[EventHandlerType]:
        return [
            (evt.EVT_CONN_OPEN, self._on_conn_open),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_CONN_CLOSE, self._on_conn_close),
            (evt.EVT_C_ECHO, self.store.handle_echo),
            (evt.EVT_C_STORE, self.store.handle_store),
            (evt.EVT_C_FIND, self.find.handle_find),
            (evt.EVT_C_MOVE, self.retrieve.handle_move),
            (evt.EVT_C_GET, self.retrieve.handle_get),
            (evt.EVT_N_ACTION, self.commitment.handle_n_action),
            *self.extra_handlers,
        ]

    def start(self) -> None:
        e = self.cfg.edge
        if e.port:
            srv = self._listen((e.host, e.port), None)
            self._servers.append(srv)
            log.info("listening ae_title=%s address=%s:%d tls=no", e.ae_title, e.host, e.port)
        if e.tls.port and e.tls.cert_file:
            srv = self._listen((e.host, e.tls.port), self._server_ssl_context())
            self._servers.append(srv)
            log.info(
                "listening ae_title=%s address=%s:%d tls=yes mutual=%s",
                e.ae_title,
                e.host,
                e.tls.port,
                "yes" if e.tls.require_client_cert else "no",
            )
        elif e.tls.port:
            log.info("TLS listener disabled: edge.tls.cert_file and key_file are not set")

    def _listen(self, address: tuple[str, int], ssl_context: ssl.SSLContext | None) -> Any:
        if not self.reuse_port:
            return self.ae.start_server(
                address, block=False, evt_handlers=self.handlers(), ssl_context=ssl_context
            )
        # ae.start_server(block=False) with our server class (SO_REUSEPORT before bind)
        srv = self.ae.make_server(
            address,
            evt_handlers=self.handlers(),
            ssl_context=ssl_context,
            server_class=_ReusePortServer,
        )
        threading.Thread(target=srv.serve_forever, name="AcceptorServer", daemon=True).start()
        self.ae._servers.append(srv)
        return srv

    @property
    def ports(self) -> list[int]:
        return [srv.server_address[1] for srv in self._servers]

    def _server_ssl_context(self) -> ssl.SSLContext:
        return server_context(self.cfg.edge.tls)

    def stop(self, join_timeout_s: float = 10.0) -> None:
        """Stop listening, abort open associations and wait for their threads.

        Waiting matters: an association thread that outlives the server would still log and
        release its slot after the index, the slots file and the log handlers are gone.
        """
        for srv in self._servers:
            srv.shutdown()
        self._servers.clear()
        self.ae.shutdown()
        for waiting in self.ae.active_associations:
            _stop_awaiting_request(waiting)  # abort() cannot end a wait for the A-ASSOCIATE-RQ
        deadline = time.monotonic() + join_timeout_s
        # A released association's DUL thread can outlive its Association thread (it still
        # fires EVT_CONN_CLOSE), so wait for every association or DUL thread of this AE.
        for thread in threading.enumerate():
            assoc = thread if isinstance(thread, Association) else getattr(thread, "assoc", None)
            if not isinstance(assoc, Association) or assoc.ae is not self.ae:
                continue
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        self.slots.close()
        self.find.close()
        if isinstance(self.recaller, StoreRecaller):
            self.recaller.close()

    # ---- association events ------------------------------------------------------------
    def _on_conn_open(self, event: evt.Event) -> None:
        sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        event.assoc.dul._run_loop_delay = DUL_LOOP_DELAY_S
        reactor.install(event.assoc)  # event-driven loops instead of pynetdicom's polling

    def _addresses(self, host: str) -> frozenset[str]:
        now = time.monotonic()
        hit = self._addr_cache.get(host)
        if hit and now - hit[0] < 60:
            return hit[1]
        try:
            infos = socket.getaddrinfo(host, None)
            addrs = frozenset(str(i[4][0]) for i in infos)
        except OSError:
            addrs = frozenset()
        self._addr_cache[host] = (now, addrs)
        return addrs

    def _on_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        info = assoc_info(assoc)
        called = (
            (assoc.acceptor.primitive.called_ae_title or "") if assoc.acceptor.primitive else ""
        )
        if not called and assoc.requestor.primitive is not None:
            called = assoc.requestor.primitive.called_ae_title or ""
        node = get_node(self.db.reader(), info.calling_ae)
        info.node = node
        addresses = self._addresses(node.host) if node and node.host != "*" else frozenset()
        with self.slots.locked():
            active_total, active_for_node = self.slots.counts(info.calling_ae)
            d = decide(
                node=node,
                calling_ae=info.calling_ae,
                called_ae=str(called).strip(),
                our_ae=self.cfg.edge.ae_title,
                check_called_ae=self.cfg.edge.check_called_ae,
                peer_ip=info.peer,
                node_addresses=addresses,
                active_total=active_total,
                max_total=self.cfg.edge.max_associations,
                active_for_node=active_for_node,
            )
            if d.accept:
                info.slot = self.slots.take(info.calling_ae)
                info.counted = info.slot is not None
                if not info.counted:  # every record held (counts said otherwise): still refuse
                    d = Decision(
                        False,
                        f"global association limit {self.cfg.edge.max_associations} reached",
                        RJ_LOCAL_LIMIT_EXCEEDED,
                    )
        if d.accept:
            metrics.association_opened()
            return
        metrics.association_rejected(d.reason)
        log.warning(
            "association rejected calling_ae=%s called_ae=%s peer=%s reason=%s",
            info.calling_ae,
            str(called).strip(),
            info.peer,
            d.reason,
        )
        self._record_event("association_rejected", info, d.reason)
        assoc.acse.send_reject(*d.reject)
        assoc.kill()

    def _record_event(self, kind: str, info: AssocInfo, detail: str) -> None:
        try:
            with self.db.write() as conn:
                conn.execute(
                    "INSERT INTO events(at, kind, calling_ae, peer, detail) VALUES (?,?,?,?,?)",
                    (time.time(), kind, info.calling_ae, info.peer, detail),
                )
        except Exception:  # the rejection itself matters more than its audit row
            log.exception("could not record event kind=%s", kind)

    def _on_conn_close(self, event: evt.Event) -> None:
        _stop_awaiting_request(event.assoc)
        info = getattr(event.assoc, "hpacs_info", None)
        if info is None or not info.counted:
            return
        info.slot.release()
        extra = " ".join(f"{k}={v}" for k, v in sorted(info.stats.items()))
        log.info(
            "association closed calling_ae=%s peer=%s contexts=%d stored=%d failed=%d "
            "duration_s=%.3f%s",
            info.calling_ae,
            info.peer,
            len(event.assoc.accepted_contexts),
            info.stored,
            info.failed,
            time.monotonic() - info.started,
            f" {extra}" if extra else "",
        )

    def active_associations(self) -> int:
        """Active associations of every acceptor process (the slots file)."""
        return self.slots.active()

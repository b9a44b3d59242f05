"""The DIMSE side of one process: listeners, admission, per-association bookkeeping, services.

Threading model (docs/ARCHITECTURE.md, "DIMSE layer"): every connection has one thread that
owns its socket from accept to close (edge/dimse/acceptor.py); the service handlers run in it.
The DIMSE path stays synchronous on the stdlib sqlite3. Handlers are built here from the few
things each uses (ingestor, index, instance source, a settings record), never this object.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from pathlib import Path

from edge import events
from edge.access import RJ_LOCAL_LIMIT_EXCEEDED, Decision, decide
from edge.assoc import AssocInfo
from edge.cache import Cache
from edge.commitment import COMMITMENT_SOP_CLASS, CommitmentService, CommitSettings
from edge.commitqueue import ReportQueue, Retrier
from edge.contexts import ALL_TRANSFER_SYNTAXES, STORAGE_SOP_CLASSES, VERIFICATION
from edge.dimse import command as cmd
from edge.dimse import scp
from edge.dimse.acceptor import Acceptor, Admission, Settings
from edge.dimse.engine import Association, Sink
from edge.dimse.negotiation import Context, Request, supported_context
from edge.find import FIND_SOP_CLASSES, FindService
from edge.handlers import StoreService
from edge.ingest import Ingestor
from edge.locate import Locator, Recaller
from edge.recall import StoreRecaller
from edge.retrieve import GET_SOP_CLASSES, MOVE_SOP_CLASSES, RetrieveService, RetrieveSettings
from edge.scu import node_ssl_context
from edge.sender import CacheSource
from edge.slots import AssocSlots
from edge.tls import server_context
from shared import metrics
from shared.config import Config
from shared.index import Database
from shared.registry import Node, get_node
from shared.store import open_store

log = logging.getLogger("hpacs.edge.server")


class EdgeServer:
    """The DIMSE side of one process; `reuse_port` lets several acceptor processes share a port."""

    def __init__(self, cfg: Config, db: Database, *, reuse_port: bool = False) -> None:
        e = cfg.edge
        self.cfg = cfg
        self.db = db
        self.reuse_port = reuse_port
        self.cache = Cache(e.cache_dir)
        self.ingestor = Ingestor(
            db,
            self.cache,
            duplicates=e.duplicates,
            min_free_bytes=e.min_free_bytes,
            max_object_bytes=e.max_object_bytes,
        )
        if e.index_synchronous == "normal":
            db.set_synchronous("NORMAL")  # edge.index_synchronous, docs/ARCHITECTURE.md
        # Association limits hold across acceptor processes (edge/slots.py).
        self.slots = AssocSlots(Path(e.data_dir) / "associations.slots", e.max_associations)
        self._addr_cache: dict[str, tuple[float, frozenset[str]]] = {}
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
        self.reports = ReportQueue(db)
        # Every read of a cached instance goes through edge/locate.py (verified, repaired).
        self.locator = Locator(db, self.cache, self.recaller)
        self.store = StoreService(self.ingestor, self.cache.tmp, e.max_object_bytes, db)
        self.find = FindService(db.path, e.ae_title, e.find_max_results)
        self.retrieve = RetrieveService(
            db,
            CacheSource(self.locator),
            RetrieveSettings(e.ae_title, e.max_pdu_bytes, e.association_timeout_s),
            self._node_ssl,
        )
        self.commitment = CommitmentService(
            db,
            self.locator,
            self.reports,
            CommitSettings(e.ae_title, e.association_timeout_s),
            self._node_ssl,
        )
        self.retrier: Retrier | None = None
        self.services = scp.Services(
            handlers={
                cmd.C_ECHO_RQ: self.store.handle_echo,
                cmd.C_STORE_RQ: self.store.handle_store,
                cmd.C_FIND_RQ: self.find.handle_find,
                cmd.C_MOVE_RQ: self.retrieve.handle_move,
                cmd.C_GET_RQ: self.retrieve.handle_get,
                cmd.N_ACTION_RQ: self.commitment.handle_n_action,
            },
            sink_for=self._sink_for,
        )
        self._supported = _supported_contexts()
        self.acceptor = Acceptor(
            Settings(
                our_max_pdu=e.max_pdu_bytes,
                artim_timeout_s=e.artim_timeout_s,
                idle_timeout_s=e.network_timeout_s,
                dimse_timeout_s=e.dimse_timeout_s,
                max_unauthenticated=e.max_unauthenticated,
                reuse_port=reuse_port,
            ),
            admit=self._admit,
            serve=self._serve,
            refused=self._refused,
            supported=lambda _req: (self._supported, True),
        )

    # ---- set-up ------------------------------------------------------------------------
    def _node_ssl(self, node: Node) -> ssl.SSLContext | None:
        return node_ssl_context(self.cfg.edge.tls, node)

    def _sink_for(self, assoc: Association, cx: Context, command: cmd.Command) -> Sink | None:
        if command.field == cmd.C_STORE_RQ:
            return self.store.sink_for(assoc, cx, command)
        return None

    def start(self, *, retrier: bool = True) -> None:
        """Listen; `retrier` runs the commitment report queue here (one process per node)."""
        e = self.cfg.edge
        if e.port:
            self.acceptor.listen(e.host, e.port, None)
            log.info("listening ae_title=%s address=%s:%d tls=no", e.ae_title, e.host, e.port)
        if e.tls.port and e.tls.cert_file:
            self.acceptor.listen(e.host, e.tls.port, self._server_ssl_context())
            log.info(
                "listening ae_title=%s address=%s:%d tls=yes mutual=%s",
                e.ae_title,
                e.host,
                e.tls.port,
                "yes" if e.tls.require_client_cert else "no",
            )
        elif e.tls.port:
            log.info("TLS listener disabled: edge.tls.cert_file and key_file are not set")
        if retrier:
            self.start_retrier()

    def start_retrier(self) -> None:
        self.retrier = Retrier(self.reports, self.commitment.deliver)
        self.retrier.start()

    @property
    def ports(self) -> list[int]:
        return self.acceptor.ports

    def _server_ssl_context(self) -> ssl.SSLContext:
        return server_context(self.cfg.edge.tls)

    def stop(self, join_timeout_s: float = 5.0) -> None:
        """Stop listening, end open associations and wait (bounded) for their threads, so none
        logs or releases a slot after the index, the slots file and the log handlers are gone."""
        self.acceptor.stop(join_timeout_s)
        if self.retrier is not None:
            self.retrier.stop()
        self.slots.close()
        self.find.close()
        if isinstance(self.recaller, StoreRecaller):
            self.recaller.close()

    # ---- admission ---------------------------------------------------------------------
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

    def _admit(self, req: Request, peer: str) -> Admission:
        info = AssocInfo(calling_ae=req.calling_ae, peer=peer, called_ae=req.called_ae)
        node = get_node(self.db.reader(), info.calling_ae)
        info.node = node
        addresses = self._addresses(node.host) if node and node.host != "*" else frozenset()
        e = self.cfg.edge
        with self.slots.locked():
            active_total, active_for_node = self.slots.counts(info.calling_ae)
            d = decide(
                node=node,
                calling_ae=info.calling_ae,
                called_ae=req.called_ae,
                our_ae=e.ae_title,
                check_called_ae=e.check_called_ae,
                peer_ip=peer,
                node_addresses=addresses,
                active_total=active_total,
                max_total=e.max_associations,
                active_for_node=active_for_node,
            )
            if d.accept:
                info.slot = self.slots.take(info.calling_ae)
                if info.slot is None:  # every record held (counts said otherwise): still refuse
                    d = Decision(
                        False,
                        f"global association limit {e.max_associations} reached",
                        RJ_LOCAL_LIMIT_EXCEEDED,
                    )
        if d.accept:
            metrics.association_opened()
            return Admission(state=info)
        metrics.association_rejected(d.reason)
        log.warning(
            "association rejected calling_ae=%s called_ae=%s peer=%s reason=%s",
            info.calling_ae,
            req.called_ae,
            peer,
            d.reason,
        )
        self._record_event("association_rejected", info.calling_ae, peer, d.reason)
        return Admission(reject=d.reject, reason=d.reason)

    def _refused(self, peer: str, reason: str, calling_ae: str) -> None:
        """A connection refused before association (TLS, protocol, ARTIM, the unauthenticated
        cap): one WARNING line with the peer, and a row for the console's rejected list."""
        log.warning("connection refused peer=%s reason=%s", peer, reason)
        metrics.association_rejected(reason.split(":")[0])
        # at most one row per peer and minute (edge/events.py): a flood of sockets must not
        # become a flood of index writes; every refusal still has its log line
        events.record(self.db, "association_rejected", calling_ae, peer, reason)

    def _record_event(self, kind: str, calling_ae: str, peer: str, detail: str) -> None:
        try:
            with self.db.write() as conn:
                conn.execute(
                    "INSERT INTO events(at, kind, calling_ae, peer, detail) VALUES (?,?,?,?,?)",
                    (time.time(), kind, calling_ae, peer, detail[:500]),
                )
        except Exception:  # the rejection itself matters more than its audit row
            log.exception("could not record event kind=%s", kind)

    # ---- one association ---------------------------------------------------------------
    def _serve(self, assoc: Association | None, admission: Admission) -> None:
        info: AssocInfo = admission.state
        ended = "not established"
        contexts = 0
        try:
            if assoc is not None:
                assoc.info = info
                contexts = len(assoc.contexts)
                ended = scp.run(assoc, self.services, lambda: self.acceptor.stopping)
        finally:
            if info.slot is not None:
                info.slot.release()
                info.slot = None
            extra = " ".join(f"{k}={v}" for k, v in sorted(info.stats.items()))
            log.info(
                "association closed calling_ae=%s peer=%s contexts=%d stored=%d failed=%d "
                "duration_s=%.3f ended=%s%s",
                info.calling_ae,
                info.peer,
                contexts,
                info.stored,
                info.failed,
                time.monotonic() - info.started,
                ended.replace(" ", "_") if len(ended) < 40 else "error",
                f" {extra}" if extra else "",
            )
            if ended not in ("released", "not established", "server stopping"):
                log.info("association end calling_ae=%s reason=%s", info.calling_ae, ended)
            for work in info.after:
                if self.acceptor.stopping:
                    break  # queued reports are delivered by the retrier after a restart
                try:
                    work()
                except Exception:
                    log.exception("after-association work failed calling_ae=%s", info.calling_ae)

    def active_associations(self) -> int:
        """Active associations of every acceptor process (the slots file)."""
        return self.slots.active()


def _supported_contexts() -> list[object]:
    three = ALL_TRANSFER_SYNTAXES[:3]
    out = [supported_context(VERIFICATION, three)]
    # Role selection accepted so C-GET peers can take the storage SCP role.
    out += [supported_context(uid, ALL_TRANSFER_SYNTAXES, True) for uid in STORAGE_SOP_CLASSES]
    out += [supported_context(uid, three) for uid in FIND_SOP_CLASSES]
    out += [supported_context(uid, three) for uid in MOVE_SOP_CLASSES + GET_SOP_CLASSES]
    out.append(supported_context(COMMITMENT_SOP_CLASS, three, True))
    return out

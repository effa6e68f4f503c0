"""The audit log: who leased, labeled, skipped, flagged, resolved or requeued
which task, when, and from where; which addresses were locked out; which
annotators were paused by the gate or re-admitted by a reviewer
(:mod:`~consumers.labeling.gating`); which guideline versions the service began
to show (:mod:`~consumers.labeling.guidelines`).

The API keeps each :func:`event` in the queue's store in the same transaction
as the action it records, so an action and its audit event are written
together or not at all (a refused request records nothing).
:class:`AuditShipper` sends them to the ``audit`` topic as ``AuditEvent``
records, oldest first, and drops each from the store once Kafka confirmed it;
the worker's ``audit`` agent writes them to the ``audit_log`` table in
ClickHouse (the embedded engine has one owner, the worker, so the service
never writes there itself). Nothing changes or removes an event after that::

    SELECT ts, action, annotator_id, client, task_id, detail
    FROM audit_log FINAL WHERE annotator_id = 'ann' ORDER BY ts

>>> e = event("label", "ann", "annotator", "10.0.0.7", "t-1", "spam", now_ms=1700000000000)
>>> e["action"], e["annotator_id"], e["client"], e["task_id"], e["detail"]
('label', 'ann', '10.0.0.7', 't-1', 'spam')
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid

from confluent_kafka import Producer

from consumers.background import Background
from feedbackloop.settings import Settings
from schemas import codec

log = logging.getLogger("feedbackloop.labeling")

ACTIONS = ("lease", "label", "skip", "flag", "resolve", "requeue", "lockout", "pause", "readmit",
           "guideline")


def event(action: str, annotator_id: str, role: str, client: str, task_id: str | None = None,
          detail: str = "", now_ms: int | None = None) -> dict:
    """An ``AuditEvent`` record."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}: one of {', '.join(ACTIONS)}")
    return {"event_id": str(uuid.uuid4()), "ts": int(time.time() * 1000) if now_ms is None else now_ms,
            "action": action, "annotator_id": annotator_id, "role": role, "client": client, "task_id": task_id,
            "detail": detail, "service": f"{socket.gethostname()}:{os.getpid()}"}


class AuditShipper(Background):
    """Sends the store's audit events to ``audit`` until :meth:`stop` (which
    sends what is left first, for up to ``timeout`` seconds)."""

    name = "labeling-audit"

    def __init__(self, settings: Settings, store, every: float = 0.5, timeout: float = 10.0):
        super().__init__()
        self.store = store
        self.topic = settings.topic("audit")
        self.every = every
        self.timeout = timeout
        self.producer = Producer({**settings.kafka_config(), "enable.idempotence": True, "acks": "all",
                                  "linger.ms": 5, "message.timeout.ms": int(timeout * 1000)})

    def ship(self) -> int:
        """Send the events waiting in the store; returns how many Kafka confirmed."""
        confirmed, errors = [], []
        for seq, e in self.store.unsent_audit():
            def delivered(err, _message, seq=seq):
                if err is None:
                    confirmed.append(seq)
                else:
                    errors.append(err)

            self.producer.produce(self.topic, codec.encode("AuditEvent", e), on_delivery=delivered)
            self.producer.poll(0)
        self.producer.flush(self.timeout)
        self.store.forget_audit(confirmed)
        if errors:
            log.warning("%d audit event(s) not yet on Kafka, will retry: %s", len(errors), errors[0])
        return len(confirmed)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.ship()
            except Exception:  # the events stay in the store; the next round sends them
                log.exception("sending audit events failed; trying again")
        try:
            self.ship()
        except Exception:
            log.exception("audit events left unsent at stop; they are sent at the next start")
        self.producer = None  # lets the client go: no more connections to the broker

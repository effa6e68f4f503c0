"""The HTTP API annotators (and the web UI) talk to; its description is at ``/openapi.json``.

Every ``/api`` request needs ``Authorization: Bearer <token>`` (401 without a
valid one, 403 outside the token's role). Errors are JSON ``{"detail": ...}``:
404 unknown task, 409 a task not in a state for the request (not leased to
you, already labeled, flagged), 422 a malformed request or a label outside the
task's label set (a ``multi_label`` task takes ``labels``, the set of classes
that apply, an empty list when none does; any other task one ``label``), 503 a label stored but not yet confirmed by Kafka (it is
sent again; submitting again is safe). A refused request writes nothing.
Before any of that, the :class:`~consumers.labeling.guard.Guard` checks the
host, the rate limits, the token and the body's size and time (400, 429, 401,
413, 408), and puts security headers on every answer. Every lease, label,
skip, flag, resolution and requeue is written to the audit log
(:mod:`~consumers.labeling.audit`) with the action. An annotator the
:class:`~consumers.labeling.gating.Gate` paused gets 423 instead of a task
until a reviewer re-admits them. There is no ``/docs``
page: open ``/openapi.json`` in any OpenAPI viewer.

>>> from fastapi.testclient import TestClient
>>> from consumers.labeling.outbox import Outbox
>>> from consumers.labeling.store import Store
>>> from consumers.labeling.tokens import Tokens
>>> token = "Zq3vT8mW1xK5pR7yN2bC6dF9"
>>> store, sent, tokens = Store(":memory:"), [], Tokens.parse(f"{token}:ann:annotator")
>>> client = TestClient(create_app(store, Outbox(store, sent.extend), tokens), base_url="http://localhost")
>>> client.post("/api/tasks/next").status_code
401
>>> client.headers["Authorization"] = f"Bearer {token}"
>>> client.post("/api/tasks/next").status_code  # nothing in the queue
204
"""


import json
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Path as PathParam, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, model_validator

from consumers.labeling import audit
from consumers.labeling.gating import Gate
from consumers.labeling.guidelines import Guidebook
from consumers.labeling.guard import Guard
from consumers.labeling.outbox import DeliveryError, Outbox
from consumers.labeling.store import Store, TaskError
from consumers.labeling.tokens import Annotator, Tokens
from consumers.terminal import explain

UI = Path(__file__).resolve().parent / "ui"
#: Longest note an annotator may attach (characters).
MAX_NOTE = 2000
#: Most classes one multi-label answer may hold.
MAX_LABELS = 200
#: The guideline shown when none is configured.
DEFAULT_GUIDELINE = ("Choose the label that fits the item best. The suggestion is the model's guess: "
                     "check it, don't trust it. When two labels fit equally well, flag the item as "
                     "ambiguous and say why in a note.")

TaskId = Annotated[str, PathParam(min_length=1, max_length=200, description="The task's id.")]


# --------------------------------------------------------------------------- bodies


class Error(BaseModel):
    detail: str


class Note(BaseModel):
    annotator_id: str
    kind: str = Field(description="flag (an annotator found the item ambiguous) or review (a reviewer's note).")
    note: str
    ts: int


class Task(BaseModel):
    """A task as an annotator sees it."""

    task_id: str
    item_id: str
    kind: str = Field(description="prediction, override or appeal.")
    text: str | None = None
    features: dict[str, float]
    label_set: list[str]
    suggested_label: str | None = None
    confidence: float = Field(description="The model's probability for the suggested label.")
    why: list[str] = Field(description="Why the item was chosen, one plain sentence per reason.")
    reasons: list[str]
    predicted_label: str | None = None
    user_label: str | None = None
    model_version: str
    shadow_version: int
    priority: float
    state: str
    lease_until_ms: int | None = Field(None, description="When the lease ends and the task returns to the queue.")
    notes: list[Note] = Field(description="Ambiguity notes: the user's own words, flags and reviewers' notes.")
    guideline: str
    label_guidelines: dict[str, str] = Field(description="What each label means, where the guideline says.")
    guideline_title: str = Field("", description="The title of the guideline for this label set.")
    guideline_version: str = Field("", description="The guideline version shown (sequence-hash); the label "
                                                   "inherits it. Empty: no versioned guideline.")
    examples: dict[str, list[str]] = Field(default_factory=dict,
                                           description="Worked examples of each label, where the guideline has some.")
    context: dict[str, str]
    multi_label: bool = Field(False, description="True: answer with labels, any subset of label_set (the empty "
                                                 "set too); false: with one label.")
    suggested_labels: list[str] | None = Field(None, description="On a multi-label task, the set the model "
                                                                 "suggests, when known.")


class LabelIn(BaseModel):
    label: str | None = Field(None, min_length=1, max_length=200,
                              description="One of the task's label set (a single-label task).")
    labels: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        None, max_length=MAX_LABELS, description="The classes that apply, any subset of the task's label set; "
                                                 "[] when none does (a multi-label task).")
    note: str | None = Field(None, max_length=MAX_NOTE)

    @model_validator(mode="after")
    def one_answer(self):
        if (self.label is None) == (self.labels is None):
            raise ValueError("send either label (one class) or labels (the set of classes, [] for none)")
        return self

    def answer(self) -> str | list[str]:
        """What :meth:`~consumers.labeling.store.Store.label` takes: one class, or the set."""
        return self.label if self.labels is None else self.labels


class LabelOut(BaseModel):
    event_id: str = Field(description="The label event's id; the same for every submit of this task by you.")
    task_id: str
    label: str = Field(description="The class; on a multi-label task the set's classes joined by |.")
    labels: list[str] | None = Field(None, description="On a multi-label task, the set sent (sorted).")
    annotator_id: str
    duration_ms: int
    duplicate: bool = Field(description="True when you had already labeled this task (nothing new was sent).")


class FlagIn(BaseModel):
    note: str = Field(min_length=1, max_length=MAX_NOTE, description="What makes the item ambiguous.")


class RequeueIn(BaseModel):
    note: str | None = Field(None, max_length=MAX_NOTE, description="Shown to the next annotator.")


class Done(BaseModel):
    task_id: str
    state: str


class AnnotatorStats(BaseModel):
    annotator_id: str
    labels: int
    labels_last_hour: int
    skips: int
    flags: int
    median_seconds: float | None = Field(description="Median seconds per label, over the last 50 labels.")


class Me(AnnotatorStats):
    role: str
    state: str = Field("active", description="active, or paused by the gold checks until a reviewer re-admits you.")


class Gating(BaseModel):
    annotator_id: str
    state: str = Field(description="active or paused.")
    since_ms: int = Field(description="When the state began.")
    by: str = Field(description="Who set it: gate (the gold checks) or a reviewer.")
    reason: str
    gold_checks: int = Field(description="Gold checks since the last admission.")
    gold_correct: int


class QueueStats(BaseModel):
    pending: int
    leased: int
    flagged: int
    labeled: int
    unsent_labels: int
    model_version: int = Field(description="The shadow model version the queue was last ranked by.")


class Stats(BaseModel):
    queue: QueueStats
    annotators: list[AnnotatorStats]


class Health(BaseModel):
    status: str


def _responses(*codes: int) -> dict:
    """The answers of an ``/api`` operation besides success: ``codes``, and the guard's."""
    words = {400: "The body is not JSON.", 401: "No valid token.", 403: "The token's role does not allow this.",
             404: "No such task.", 408: "The body did not arrive in time.", 409: "The task is not in a state for this request.",
             423: "You are paused: a reviewer must re-admit you.",
             413: "The body is too large.", 429: "Too many requests, or too many bad tokens from your address: "
                                                  "wait as long as Retry-After says.",
             503: "Stored, but Kafka has not confirmed it yet; it will be sent again."}
    return {c: {"model": Error, "description": words[c]} for c in sorted({*codes, 401, 408, 413, 429})}


# --------------------------------------------------------------------------- the app


def _said(record: dict) -> str:
    """A label's answer for the audit log: the label, or a multi-label set as JSON (``[]`` for none)."""
    return record["label"] if record.get("labels") is None else json.dumps(record["labels"])


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def create_app(store: Store, outbox: Outbox, tokens: Tokens, guidelines: dict | None = None,
               lease_seconds: float = 600.0, gate: Gate | None = None, **guard) -> Guard:
    """The labeling API and UI over ``store`` behind its :class:`~consumers.labeling.guard.Guard`;
    labels leave through ``outbox``.

    ``guidelines`` is a :class:`~consumers.labeling.guidelines.Guidebook` (versioned
    markdown) or a fixed ``{"text": ..., "labels": {label: meaning}}``; ``guard`` holds
    ``gate`` calibrates and pauses annotators on gold items (none: no gating);
    the guard's options (``allowed_hosts``, ``limits``, ``max_body``, ``body_timeout``;
    by default ``localhost`` and this machine's name, and the defaults of
    :mod:`~consumers.labeling.guard`). The FastAPI app is the guard's ``app``.
    """
    book = guidelines if isinstance(guidelines, Guidebook) else Guidebook(None, store, static=guidelines)
    gate = gate or Gate(store, None)
    app = FastAPI(title="feedbackloop labeling", version="1", docs_url=None, redoc_url=None,
                  description="Pull the next task, label it, skip it or flag it as ambiguous. "
                              "Every /api request needs `Authorization: Bearer <token>`.")
    bearer = HTTPBearer(auto_error=False, description="An annotator's token.")

    def role(needed: str):
        def check(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Annotator:
            who = tokens.get(credentials.credentials if credentials else None)
            if who is None:
                raise HTTPException(401, "missing or invalid token: send Authorization: Bearer <token>",
                                    headers={"WWW-Authenticate": "Bearer"})
            if not who.may(needed):
                raise HTTPException(403, f"this needs the {needed} role; your token's role is {who.role}")
            return who
        return check

    Annotating = Annotated[Annotator, Depends(role("annotator"))]
    Reviewing = Annotated[Annotator, Depends(role("reviewer"))]
    Administering = Annotated[Annotator, Depends(role("admin"))]

    @app.exception_handler(TaskError)
    def task_error(_request, exc: TaskError):
        if exc.status == 422:  # the shape FastAPI gives every other 422
            detail = [{"loc": ["body", "label"], "msg": str(exc), "type": "value_error"}]
            return JSONResponse({"detail": detail}, status_code=422)
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    def view(v: dict) -> Task:
        t = v["task"]
        g, version = book.for_labels(t["label_set"])
        meanings, examples = (g.meanings, g.examples) if g else ({}, {})
        notes = list(v["notes"])
        if t.get("note"):
            notes.insert(0, {"annotator_id": "user", "kind": t["kind"], "note": t["note"], "ts": t["source_ts"]})
        return Task(task_id=t["task_id"], item_id=t["item_id"], kind=t["kind"], text=t.get("text"),
                    features=t.get("features") or {}, label_set=t["label_set"],
                    suggested_label=t.get("suggested_label"), confidence=t["confidence"],
                    why=explain(t).splitlines(), reasons=t["reasons"], predicted_label=t.get("predicted_label"),
                    user_label=t.get("user_label"), model_version=t["model_version"],
                    shadow_version=t["shadow_version"], priority=v["priority"], state=v["state"],
                    lease_until_ms=v["lease_until_ms"], notes=notes,
                    guideline=(g.text if g and g.text else DEFAULT_GUIDELINE),
                    label_guidelines={k: meanings[k] for k in t["label_set"] if meanings.get(k)},
                    guideline_title=g.title if g else "", guideline_version=version,
                    examples={k: examples[k] for k in t["label_set"] if examples.get(k)},
                    context=t.get("context") or {}, multi_label=bool(t.get("multi_label")),
                    suggested_labels=t.get("suggested_labels"))

    def deliver(record: dict, new: bool) -> LabelOut:
        try:
            outbox.deliver([record])  # once, however many submits race here
        except DeliveryError as exc:
            raise HTTPException(503, f"label stored, not yet confirmed by Kafka ({exc}); "
                                     "it will be sent again, and submitting again is safe") from None
        return LabelOut(**{k: record[k] for k in ("event_id", "task_id", "label", "annotator_id", "duration_ms")},
                        labels=record.get("labels"), duplicate=not new)

    def note(action: str, who: Annotator, request: Request, task_id: str, detail: str = "") -> None:
        """Audit an action, inside the store transaction that makes it."""
        store.audit(audit.event(action, who.annotator_id, who.role, _client(request), task_id, detail))

    # ------------------------------------------------------------------ annotators

    @app.get("/api/me", tags=["annotators"], responses=_responses(401))
    def me(who: Annotating) -> Me:
        """Who the token belongs to, with their own count and pace."""
        return Me(role=who.role, state=store.gate(who.annotator_id)["state"],
                  **store.annotator_stats(who.annotator_id)[0])

    @app.post("/api/tasks/next", tags=["annotators"], status_code=200,
              responses={204: {"description": "No task is waiting."}, **_responses(401, 423)})
    def next_task(who: Annotating, request: Request) -> Task:
        """Lease the next task (the one of highest priority). Asking again while
        holding a lease returns the same task, its lease renewed."""
        with store.transaction():
            if gate.paused(who.annotator_id):
                raise HTTPException(423, "you are paused: your accuracy on known-answer items is under the "
                                         "threshold; a reviewer must re-admit you")
            gate.prepare(who.annotator_id, reviewer=who.may("reviewer"))
            leased = store.lease(who.annotator_id, seconds=lease_seconds, reviewer=who.may("reviewer"))
            if leased is None:
                return Response(status_code=204)
            note("lease", who, request, leased["task"]["task_id"])
            shown = view(leased)
            store.shown(shown.task_id, shown.guideline_version)  # its label inherits the version
        return shown

    @app.post("/api/tasks/{task_id}/label", tags=["annotators"], responses=_responses(400, 401, 404, 409, 503))
    def label(task_id: TaskId, body: LabelIn, who: Annotating, request: Request) -> LabelOut:
        """Label a task you hold. The answer means the label is on Kafka; a second
        submit of the same task returns the first label and sends nothing."""
        with store.transaction():
            record, new = store.label(task_id, who.annotator_id, body.answer(), body.note)
            if new:
                note("label", who, request, task_id, _said(record))
                gate.judge(record, _client(request))
        return deliver(record, new)

    @app.post("/api/tasks/{task_id}/skip", tags=["annotators"], responses=_responses(401, 404, 409))
    def skip(task_id: TaskId, who: Annotating, request: Request) -> Done:
        """Give a task back; you will not be offered it again."""
        with store.transaction():
            store.skip(task_id, who.annotator_id)
            note("skip", who, request, task_id)
        return Done(task_id=task_id, state="pending")

    @app.post("/api/tasks/{task_id}/flag", tags=["annotators"], responses=_responses(400, 401, 404, 409))
    def flag(task_id: TaskId, body: FlagIn, who: Annotating, request: Request) -> Done:
        """Set a task you hold aside as ambiguous, with a note, for a reviewer."""
        with store.transaction():
            store.flag(task_id, who.annotator_id, body.note)
            note("flag", who, request, task_id)
        return Done(task_id=task_id, state="flagged")

    # ------------------------------------------------------------------ reviewers

    @app.get("/api/review/flagged", tags=["reviewers"], responses=_responses(401, 403))
    def flagged(who: Reviewing) -> list[Task]:
        """Tasks flagged as ambiguous, oldest first."""
        return [view(v) for v in store.flagged()]

    @app.post("/api/review/{task_id}/label", tags=["reviewers"], responses=_responses(400, 401, 403, 404, 409, 503))
    def resolve(task_id: TaskId, body: LabelIn, who: Reviewing, request: Request) -> LabelOut:
        """Decide a flagged task: your label goes to Kafka like any other."""
        with store.transaction():
            record, new = store.resolve(task_id, who.annotator_id, body.answer(), body.note)
            if new:
                note("resolve", who, request, task_id, _said(record))
        return deliver(record, new)

    @app.post("/api/review/{task_id}/requeue", tags=["reviewers"], responses=_responses(400, 401, 403, 404, 409))
    def review_requeue(task_id: TaskId, body: RequeueIn, who: Reviewing, request: Request) -> Done:
        """Send a flagged task back to the queue, with a note for the next annotator."""
        with store.transaction():
            store.requeue(task_id, who.annotator_id, body.note, only_flagged=True)
            note("requeue", who, request, task_id, "flagged")
        return Done(task_id=task_id, state="pending")

    @app.get("/api/review/annotators", tags=["reviewers"], responses=_responses(401, 403))
    def gating(who: Reviewing) -> list[Gating]:
        """Annotators the gold checks paused (and those re-admitted since), with their record."""
        return [Gating(**{k: g[k] for k in Gating.model_fields}) for g in store.gates()]

    @app.post("/api/review/annotators/{annotator_id}/pause", tags=["reviewers"],
              responses=_responses(400, 401, 403))
    def pause(annotator_id: Annotated[str, PathParam(min_length=1, max_length=200)], body: RequeueIn,
              who: Reviewing, request: Request) -> Gating:
        """Stop leasing to an annotator now; the tasks they hold go back to the queue."""
        with store.transaction():
            gate.pause(annotator_id, who.annotator_id, who.role, _client(request), body.note or "")
        g = next(g for g in store.gates() if g["annotator_id"] == annotator_id)
        return Gating(**{k: g[k] for k in Gating.model_fields})

    @app.post("/api/review/annotators/{annotator_id}/readmit", tags=["reviewers"],
              responses=_responses(401, 403, 409))
    def readmit(annotator_id: Annotated[str, PathParam(min_length=1, max_length=200)], who: Reviewing,
                request: Request) -> Gating:
        """Let a paused annotator take tasks again; they are calibrated again on gold items."""
        with store.transaction():
            gate.readmit(annotator_id, who.annotator_id, who.role, _client(request))
        g = next(g for g in store.gates() if g["annotator_id"] == annotator_id)
        return Gating(**{k: g[k] for k in Gating.model_fields})

    # ------------------------------------------------------------------ admins

    @app.get("/api/admin/stats", tags=["admins"], responses=_responses(401, 403))
    def stats(who: Administering) -> Stats:
        """The queue by state, and every annotator's figures."""
        return Stats(queue=QueueStats(**store.counts(), model_version=store.model_version()),
                     annotators=[AnnotatorStats(**a) for a in store.annotator_stats()])

    @app.post("/api/admin/tasks/{task_id}/requeue", tags=["admins"], responses=_responses(400, 401, 403, 404, 409))
    def requeue(task_id: TaskId, body: RequeueIn, who: Administering, request: Request) -> Done:
        """Put any task not yet labeled back in the queue (ends its lease or its flag)."""
        with store.transaction():
            state = store.task(task_id)["state"]
            store.requeue(task_id, who.annotator_id, body.note)
            note("requeue", who, request, task_id, state)
        return Done(task_id=task_id, state="pending")

    # ------------------------------------------------------------------ UI and health

    @app.get("/healthz", tags=["service"])
    def health() -> Health:
        return Health(status="ok")

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(UI / "index.html")

    app.mount("/ui", StaticFiles(directory=UI), name="ui")

    def locked_out(address: str) -> None:
        store.audit(audit.event("lockout", "", "", address, detail="too many bad tokens"))

    return Guard(app, tokens, on_lockout=locked_out, **guard)

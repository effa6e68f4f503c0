"""The labeling API against its own OpenAPI description, property-based.

Schemathesis generates requests for every operation from ``/openapi.json``
(valid and invalid ones, with the admin's token, so every role's operations
are reached) and checks each answer: no server error, a status code and a body
the description declares, bad input refused, and no operation that ignores
the missing token. The queue holds real tasks, and the tokens' annotators take
leases as requests come, so labels and skips meet tasks in every state.
"""

from __future__ import annotations

import secrets

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from consumers.labeling.api import create_app
from consumers.labeling.outbox import Outbox
from consumers.labeling.ratelimit import Limits
from consumers.labeling.store import Store
from consumers.labeling.tokens import Tokens

ADMIN = secrets.token_urlsafe(32)


def _task(i: int) -> dict:
    return {"task_id": f"t-{i}", "event_id": f"e-{i}", "item_id": f"item-{i}", "created_ts": 1, "source_ts": 1,
            "kind": "appeal" if i % 3 == 0 else "prediction", "reasons": ["appeal" if i % 3 == 0 else "uncertain"],
            "signals": {"margin": 0.1}, "selection_probability": 0.2, "priority": i / 100,
            "suggested_label": "a", "confidence": 0.55, "label_set": ["a", "b", "c"], "features": {"x": i * 0.5},
            "text": f"item number {i}" if i % 2 else None, "predicted_label": "a", "user_label": None,
            "note": "wrong!" if i % 3 == 0 else None, "model_name": "prod", "model_version": "1",
            "shadow_version": 0, "policy_version": "p", "context": {}}


store = Store(":memory:")
store.add_tasks([_task(i) for i in range(200)], {("labeling.tasks", 0): 199})
sent: list[dict] = []
# Hundreds of requests a second from one address and one token, and many without a token: far past
# the rate limits, which tests/test_http_security.py checks; here every answer is the API's own.
unlimited = Limits(per_address=(1e6, 1e6), per_token=(1e6, 1e6), failures=(1e6, 1e6))
app = create_app(store, Outbox(store, sent.extend), Tokens.parse(f"{ADMIN}:adm:admin"), lease_seconds=600,
                 allowed_hosts=["testserver"], limits=unlimited)  # the host name Schemathesis sends
config = SchemathesisConfig.from_dict({
    "headers": {"Authorization": f"Bearer {ADMIN}"},
    # Label sets belong to tasks, so a schema cannot say which labels a task takes: a well-formed
    # label outside the task's label set is refused with 422, and that is right.
    "operations": [{"include-path-regex": "/label$", "checks": {"positive_data_acceptance": {
        "expected-statuses": ["2xx", "401", "403", "404", "409", "422"]}}}],
})
schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi_description(case):
    positive = case.meta is not None and case.meta.generation.mode == "positive"
    if positive and case.path.startswith("/api/tasks/{task_id}") and "task_id" in (case.path_parameters or {}):
        # half the time, aim at the task the admin holds with a label it takes, so the happy paths run too
        held = store.lease("adm")
        if held is not None and hash(case.path_parameters["task_id"]) % 2:
            case.path_parameters["task_id"] = held["task"]["task_id"]
            if case.path.endswith("/label") and isinstance(case.body, dict) and isinstance(case.body.get("label"), str):
                case.body["label"] = "abc"[len(case.body["label"]) % 3]
    case.call_and_validate()


def test_the_run_reached_the_happy_paths():
    """Runs after the property test (file order): labels were really sent, and all were valid."""
    assert sent, "no generated request labeled a task"
    assert all(label["label"] in ("a", "b", "c") and label["annotator_id"] == "adm" for label in sent)
    assert len({label["event_id"] for label in sent}) == len(sent), "no label was sent twice"

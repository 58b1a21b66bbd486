"""Fuzz every operation `modelsync serve` publishes in its OpenAPI document (schemathesis):
no generated request may get a 5xx, and every error is JSON in the vendor's shape."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from reconciler.local.serve import create_app  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
KEY = "fuzz-key-0001"
MAX_EXAMPLES = 30


@pytest.fixture
def app(tmp_path):
    from reconciler.local.service import LocalService

    service = LocalService(tmp_path / "svc")
    app = create_app(service, keys=None, rate_limit=None, total_rate_limit=None)  # dev mode: any key works
    yield app
    service.close()


def _seed(app) -> int:
    """A model with two classes owned by KEY, so fuzzed ids can hit something real."""
    from reconciler.local.serve.auth import key_id

    svc = app.state.ctx.service
    owner = key_id(KEY)
    model = svc.create_model(owner, "fuzz", type="vision", purpose="classification", tags=())
    for i, name in enumerate(["circle/circle-00.png", "square/square-00.png"]):
        data = (REPO / "examples" / "quickstart" / "data" / name).read_bytes()
        svc.add_sample(owner, model.id, name.split("/")[0], data, uid=f"seed-{i}")
    return model.id


@pytest.mark.slow
def test_no_operation_answers_5xx(app):
    model_id = _seed(app)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 10
    image = "data:image/png;base64," + base64.b64encode(
        (REPO / "examples" / "quickstart" / "unseen" / "circle-00.png").read_bytes()
    ).decode()
    failures: list[str] = []

    def fuzz(operation) -> None:
        @given(case=operation.as_strategy())
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def run(case):
            variants = [case]
            if isinstance(case.body, dict):
                # the same request as a known key on a real model, to get past auth and lookups
                body = dict(case.body)
                if "tkn" in body:
                    body["tkn"] = KEY
                for k in ("model_id", "modelIdentifier", "app_id", "project_id"):
                    if k in body:
                        body[k] = model_id
                if "input" in body:
                    body["input"] = image
                variants.append(
                    operation.Case(
                        body=body,
                        headers=dict(case.headers or {}),
                        query=case.query,
                        path_parameters=case.path_parameters,
                        media_type=case.media_type,
                    )
                )
            for c in variants:
                response = c.call()
                if response.status_code >= 500:
                    failures.append(f"{operation.label}: HTTP {response.status_code}: {response.text[:200]}")
                elif response.status_code >= 400:
                    ctype = response.headers.get("content-type") or [""]
                    ctype = ctype[0] if isinstance(ctype, list) else ctype
                    assert ctype.startswith("application/json"), f"{operation.label}: {ctype!r}"

        run()

    for operation in operations:
        fuzz(operation)
    assert not failures, "\n".join(sorted(set(failures))[:20])

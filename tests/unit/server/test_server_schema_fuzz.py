"""schemathesis against the app's own `/openapi.json`: no 5xx, and every answer is what the schema declares.

It runs schema-valid and schema-invalid requests against every operation of the real app over the tiny
engine, and checks status codes, content types, headers and bodies against the schema. The engine serves
its own copy of the adapter store, so fuzzing `DELETE /v1/adapters/{name}?purge=true` and blends cannot
touch the store the other tests share; the fine-tuning routes keep their files and jobs in a folder of their
own. Bounded: a few examples per operation, derandomized, no database.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from support.tiny_server import ADAPTER_NAME, TINY_NAME, running_engine, tiny_settings

MAX_EXAMPLES = 30
MAX_BODY_BYTES = 64 * 1024
REAL_NAMES = {"model": TINY_NAME, "model_id": ADAPTER_NAME, "name": ADAPTER_NAME, "lora_name": ADAPTER_NAME}
ERRORS = ["400", "401", "404", "409", "413", "429", "503"]  # what the server may answer; never 422 or 500
CONFIG = {
    "checks": {
        # schema-valid is not always valid: an unknown adapter, a name the store refuses, `top_logprobs`
        # without `logprobs`, a prompt beyond the context... are 400/404 with a reason, never 5xx
        "positive_data_acceptance": {"expected-statuses": ["2xx", *ERRORS]},
        "negative_data_rejection": {"expected-statuses": ERRORS},
    }
}


@pytest.fixture(scope="module")
def fuzz_engine(
    tiny_dir: Path, adapter_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """A second engine over a private copy of the store (the fuzzer deletes and creates adapters)."""
    store = tmp_path_factory.mktemp("fuzz") / "store"
    shutil.copytree(adapter_store, store)
    with running_engine(tiny_settings(tiny_dir, tmp_path_factory.mktemp("fuzz-home"), store)) as engine:
        yield engine


@pytest.fixture(scope="module")
def api_schema(fuzz_engine: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from hotlora_server.api import create_app
    from hotlora_server.api.serving_fine_tuning import ServingFineTuning
    from hotlora_server.fine_tuning import Launch

    home = tmp_path_factory.mktemp("fuzz-fine-tuning")
    launch = Launch(home=home, adapters_dir=home / "store", base=None, chat_template=None, device="cpu")
    fine_tuning = ServingFineTuning(fuzz_engine, home / "fine_tuning", launch)
    app = create_app(fuzz_engine, max_body_bytes=MAX_BODY_BYTES, fine_tuning=fine_tuning)
    return schemathesis.openapi.from_asgi("/openapi.json", app, config=SchemathesisConfig.from_dict(CONFIG))


def _fuzz(strategy: Any, steer: bool) -> None:
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy, real=st.booleans())
    def check(case: Any, real: bool) -> None:
        if steer and real:
            _steer(case)
        case.call_and_validate()

    check()


def _steer(case: Any) -> None:
    """Most random requests fail validation early; make this one likelier to reach the engine: served names
    instead of random ones, no blend of random adapters, a short conversation and a short answer."""
    for fields in (case.body, case.path_parameters):
        if not isinstance(fields, dict):
            continue
        for name in REAL_NAMES.keys() & fields.keys():
            fields[name] = REAL_NAMES[name]
        if "model" in fields:  # a generation request
            for name in ("adapters", "blend_method", "density", "stream_options", "max_completion_tokens"):
                fields.pop(name, None)
            limit = "max_output_tokens" if "input" in fields else "max_tokens"  # /v1/responses names it so
            tokens = fields.get(limit)
            fields[limit] = min(tokens, 8) if isinstance(tokens, int) else 8  # None: up to the context
        for name in ("messages", "input"):
            if isinstance(fields.get(name), list):
                fields[name] = fields[name][-2:]


# schemathesis' own `from_fixture` + `parametrize` fails on pytest 9 (it rewrites `node._nodeid`), so each
# operation runs as a subtest over the public strategy API instead.
@pytest.mark.parametrize("mode", list(GenerationMode), ids=str)
def test_app_conforms_to_its_openapi_schema(api_schema: Any, mode: GenerationMode, subtests: Any) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 12
    if mode.is_negative:  # a path-only operation has nothing to make invalid: any string is a valid path
        operations = [op for op in operations if len(op.body) or len(op.query)]
    for operation in operations:
        with subtests.test(msg=f"{mode} {operation.label}"):
            _fuzz(operation.as_strategy(mode), steer=mode.is_positive)


def test_schema_declares_openai_errors_and_no_422(client: Any) -> None:
    doc = client.get("/openapi.json").json()
    operations = [op for ops in doc["paths"].values() for op in ops.values()]
    for op in operations:
        assert "422" not in op["responses"], op["operationId"]
        for status in ("400", "401", "404", "413", "503", "default"):
            assert op["responses"][status]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorResponse"
            }, (op["operationId"], status)
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/responses"):
        assert set(doc["paths"][path]["post"]["responses"]["200"]["content"]) == {
            "application/json",
            "text/event-stream",
        }

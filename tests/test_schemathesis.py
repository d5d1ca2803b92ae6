"""The whole `/api/` surface fuzzed from its own OpenAPI schema (issue 12): schemathesis sends
every operation of `/api/schema` generated requests, valid and invalid, over HTTP to the live
test server (a real HTTP server, production settings, real permissions), each one as an
anonymous caller, with a bogus token, a read token and a write token.

The schema is built in-process when this module is collected (pytest parametrizes one test per
operation from it; schemathesis's fixture-based loader does not run on our pytest), and the
first thing each test checks is that the live server's `/api/schema` is that very schema.

Every response must be a non-5xx, with a status code the schema declares for the operation and a
body that matches the schema declared for that status. A failure prints the request to replay
(`curl`). docs/api.md "Fuzzing" says how to run a longer session.

The seed data gives the generator real names to hit besides random ones (a provider with
mappings, an organization the caller administers, usage records and ledger entries), so that
requests get past the lookups into the views' own code.
"""

from __future__ import annotations

import json
import os
import secrets
import string
import time
from collections import Counter

import httpx
import pytest
import schemathesis
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from accounts.models import Role
from accounts.services import access_token_create
from accounts.tests.factories import MembershipFactory, OrganizationFactory
from billing.services import billing_account_get_or_create_for_user, credits_top_up
from billing.tests.factories import pending_usage, usage_ingester
from registry.tests.factories import HubModelFactory, MappingFactory, ProviderFactory

# Examples per operation in the fuzzing phase (schemathesis adds its own boundary and example
# cases on top). `make test` keeps it small; FUZZ_MAX_EXAMPLES raises it (docs/api.md).
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "25"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
USER = "fuzzer"
ORG = "fuzz-org"
PROVIDER = "fuzz-provider"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def _bogus_token() -> str:
    """Well-formed (`hf_` and 34 letters and digits) but unknown."""
    alphabet = string.ascii_letters + string.digits
    return "hf_" + "".join(secrets.choice(alphabet) for _ in range(34))


def _seed() -> dict:
    """The data the generator is steered towards; returns the values of each path and query
    parameter worth trying besides random ones, and the tokens."""
    user = usage_ingester(username=USER, plan="pro")  # staff who may ingest usage
    org = OrganizationFactory(name=ORG)
    MembershipFactory(user=user, organization=org, role=Role.ADMIN)
    provider = ProviderFactory(slug=PROVIDER)
    MembershipFactory(user=user, organization=provider.organization, role=Role.ADMIN)
    model = HubModelFactory(model_id=MODEL, author="meta-llama")
    mappings = [
        MappingFactory(provider=provider, hub_model=model),
        MappingFactory(provider=provider, task="text-generation", status="staging"),
    ]
    payer = billing_account_get_or_create_for_user(user=user)
    for i in range(3):
        pending_usage(provider=provider, payer=payer, request_id=f"fuzz-{i}")
    credits_top_up(billing_account=payer, amount_nanousd=10**9, actor="test", idempotency_key="f")
    (write, write_secret), (read, read_secret), (spare, _) = (
        access_token_create(user=user, name=f"fuzz {role}", role=role)
        for role in ("write", "read", "read")  # the spare: the one the write token may revoke
    )
    return {
        "tokens": {
            "anonymous": {},
            "bogus": {"Authorization": f"Bearer {_bogus_token()}"},
            "read": {"Authorization": f"Bearer {read_secret}"},
            "write": {"Authorization": f"Bearer {write_secret}"},
        },
        "protected_token_ids": {str(write.pk), str(read.pk)},
        "path": {
            "provider": [PROVIDER],
            "name": [USER, ORG, model.model_id.split("/")[1]],
            "namespace": ["meta-llama"],
            "mapping_id": [m.public_id for m in mappings],
            "token_id": [spare.pk],
        },
        "query": {
            "inference_provider": [PROVIDER, "all"],
            "provider": [PROVIDER],
            "payer": [USER, ORG],
            "member": [USER],
            "model": [MODEL],
            "hfModel": [MODEL],
            "author": ["meta-llama"],
            "expand": ["inferenceProviderMapping", "inference"],
        },
        "body": {
            "provider": [PROVIDER],
            "user": [USER],
            "billTo": [ORG],
            "hfModel": [MODEL],
            "task": ["conversational", "text-generation"],
            "type": ["single-model", "tag-filter"],
            "providerModel": ["fuzz-model-1"],
            "status": ["live", "staging"],
        },
    }


# The seed of the running test: the hooks read it when they build each case's strategy.
SEED: dict = {}


def _steered(value, known: dict[str, list]):
    """A strategy for `value` where each scalar under a key the seed knows is kept or swapped
    for one of the seed's values (at any depth: a body's `records[i].user`)."""
    if isinstance(value, dict):
        return st.fixed_dictionaries(
            {
                key: st.one_of(st.just(item), *[st.sampled_from(known[key])] * 2)
                if key in known and not isinstance(item, dict | list)
                else _steered(item, known)
                for key, item in value.items()
            }
        )
    if isinstance(value, list):
        return st.tuples(*(_steered(item, known) for item in value)).map(list)
    return st.just(value)


def _steer(part: str):
    """A hook: generated values of parameters (or body fields) the seed knows are sometimes
    swapped for the seed's, so that requests also name things that exist."""

    def flatmap(context, values):
        return _steered(values, SEED.get(part, {}))

    return flatmap


def _schema() -> dict:
    """What `/api/schema` serves (the same generator and renderer), as plain JSON."""
    raw = SchemaGenerator().get_schema(request=None, public=True)
    return json.loads(OpenApiJsonRenderer().render(raw))


schema = schemathesis.openapi.from_dict(_schema())
# Tokens are sent by the test (all four callers for every case), never generated.
schema.config.generation.update(with_security_parameters=False)
schema.config.update(request_timeout=30)
schema.hook("flatmap_path_parameters")(_steer("path"))
schema.hook("flatmap_query")(_steer("query"))
schema.hook("flatmap_body")(_steer("body"))


STATS = {"cases": 0, "statuses": Counter()}


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    """One line at the end: how many cases and requests, in how long (docs/api.md quotes it);
    with FUZZ_VERBOSE=1, the statuses each caller got from each operation."""
    STATS["started"] = time.monotonic()
    yield
    if not STATS["cases"]:
        return
    seconds = time.monotonic() - STATS["started"]
    terminal = request.config.pluginmanager.get_plugin("terminalreporter")
    lines = [
        f"schemathesis: {STATS['cases']} cases, {STATS['statuses'].total()} requests in "
        f"{seconds:.0f} s (max_examples={MAX_EXAMPLES} per operation)"
    ]
    if os.environ.get("FUZZ_VERBOSE"):
        lines += [f"  {n:5} {op} {caller}: {status}" for (op, caller, status), n in
                  sorted(STATS["statuses"].items())]  # fmt: skip
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        for line in lines:
            terminal.write_line(line)


@pytest.fixture
def seed(live_server):
    """The seed data (a transactional database: the live server's threads see it), and the
    check that the live server serves the schema the cases come from."""
    served = httpx.get(f"{live_server.url}/api/schema?format=json", timeout=30)
    assert served.status_code == 200
    assert served.json() == schema.raw_schema
    SEED.clear()
    SEED.update(_seed())
    yield SEED
    SEED.clear()


@pytest.mark.fuzz
@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,  # no .hypothesis/ folder in the working tree
    derandomize="FUZZ_MAX_EXAMPLES" not in os.environ,  # `make test`: the same cases each run
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_within_its_schema(case, seed, live_server):
    STATS["cases"] += 1
    for caller, headers in seed["tokens"].items():
        if (
            caller == "write"
            and case.operation.method.upper() == "DELETE"
            and case.path_parameters
            and str(case.path_parameters.get("token_id")) in seed["protected_token_ids"]
        ):
            continue  # revoking the fuzzing tokens themselves would end the run early
        response = case.call_and_validate(base_url=live_server.url, headers=headers, checks=CHECKS)
        STATS["statuses"][case.operation.label, caller, response.status_code] += 1


# --- the schema says what the API does (issue 12, finding 12) -----------------------------------
@pytest.fixture
def served_schema(api_client, db) -> dict:
    response = api_client.get("/api/schema", {"format": "json"})
    assert response.status_code == 200
    return json.loads(response.content)


def _operations(document: dict):
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            yield method.upper(), path, operation


def _json_schema(response: dict) -> dict:
    return response["content"]["application/json"]["schema"]


def _component(document: dict, ref_or_schema: dict) -> dict:
    ref = ref_or_schema.get("$ref", "")
    return document["components"]["schemas"][ref.rsplit("/", 1)[-1]] if ref else ref_or_schema


def test_the_model_list_is_declared_as_a_list(served_schema):
    listing = _json_schema(served_schema["paths"]["/api/models"]["get"]["responses"]["200"])
    assert listing["type"] == "array"
    item = _component(served_schema, listing["items"])
    assert {"_id", "id"} <= set(item["required"])


def test_token_timestamps_that_may_be_null_are_declared_nullable(served_schema):
    token = served_schema["components"]["schemas"]["AccessToken"]["properties"]
    assert token["lastUsedAt"].get("nullable") is True
    assert token["revokedAt"].get("nullable") is True


@pytest.mark.parametrize(
    ("path", "maximum"),
    [
        ("/api/models", 1000),
        ("/api/organizations/{name}/members", 1000),
        ("/api/billing/usage", 1000),
        ("/api/billing/accounts/{name}/ledger", 1000),
    ],
)
def test_limit_is_declared_with_its_bounds(served_schema, path, maximum):
    (limit,) = [
        p for p in served_schema["paths"][path]["get"]["parameters"] if p["name"] == "limit"
    ]
    assert limit["schema"]["minimum"] == 1
    assert limit["schema"]["maximum"] == maximum


def test_every_operation_declares_the_errors_it_can_return_with_the_error_body(served_schema):
    missing = []
    for method, path, operation in _operations(served_schema):
        expected = {"400"}
        if operation.get("security") != [{}]:  # any caller's token is read: a bad one is a 401
            expected.add("401")
        if "{" in path:
            expected.add("404")
        if "requestBody" in operation:
            expected |= {"413", "415"}
        declared = operation["responses"]
        missing += [f"{method} {path}: {code}" for code in sorted(expected - set(declared))]
        for code in expected & set(declared):
            body = _json_schema(declared[code])
            assert body == {"$ref": "#/components/schemas/Error"}, (method, path, code)
    assert not missing
    error = served_schema["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]


def test_duplicates_and_rate_limits_are_declared_where_they_happen(served_schema):
    paths = served_schema["paths"]
    assert "409" in paths["/api/organizations"]["post"]["responses"]
    assert "409" in paths["/api/partners/{provider}/models"]["post"]["responses"]
    assert "429" in paths["/api/partners/{provider}/models"]["post"]["responses"]
    assert (
        "Retry-After"
        in paths["/api/partners/{provider}/models"]["post"]["responses"]["429"]["headers"]
    )
    assert "429" not in paths["/api/partners/{provider}/models"]["get"]["responses"]

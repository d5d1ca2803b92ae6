"""Operator commands of the registry: hub_models_import and provider_create."""

import json
import re
import subprocess

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import CommandError
from django.db import connection
from django.test import override_settings

from accounts.models import Organization, OrgPlan
from accounts.tests.factories import OrganizationFactory
from registry.models import HubModel, Provider
from registry.tests.factories import ProviderFactory
from testsupport.processes import manage_process
from testsupport.processes import run_command as run

LLAMA = {
    "id": "meta-llama/Llama-3.1-8B-Instruct",
    "pipeline_tag": "text-generation",
    "tags": ["transformers", "conversational"],
    "author": "meta-llama",
}
QWEN = {"id": "Qwen/Qwen3-32B", "pipeline_tag": "text-generation", "tags": ["conversational"]}
LORA = {
    "id": "someone/flux-lora-ghibli",
    "pipeline_tag": "text-to-image",
    "tags": ["lora", "base_model:adapter:black-forest-labs/FLUX.1-dev"],
    "adapterWeightsPath": "ghibli.safetensors",
}
RECORDS = [LLAMA, QWEN, LORA]


def write_array(folder, records, name="models.json"):
    path = folder / name
    path.write_text(json.dumps(records, indent=2))
    return path


def write_lines(folder, records, name="models.jsonl"):
    """JSON lines with a blank line after the first record."""
    lines = [json.dumps(r) for r in records]
    lines.insert(1, "")
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


WRITERS = {"json-array": write_array, "json-lines": write_lines}


def import_file(path) -> dict:
    out, _ = run("hub_models_import", str(path))
    return json.loads(out)


def rows() -> dict[str, dict]:
    return {
        m.model_id: {
            "author": m.author,
            "pipeline_tag": m.pipeline_tag,
            "tags": m.tags,
            "adapter_weights_path": m.adapter_weights_path,
        }
        for m in HubModel.objects.all()
    }


# --- hub_models_import: success ------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("fmt", WRITERS)
def test_hub_models_import_creates_every_record_and_prints_the_counts_as_json(tmp_path, fmt):
    path = WRITERS[fmt](tmp_path, RECORDS)

    out, err = run("hub_models_import", str(path))

    assert json.loads(out) == {"created": 3, "updated": 0, "unchanged": 0}
    assert "3 created" in err
    assert rows() == {
        LLAMA["id"]: {
            "author": "meta-llama",
            "pipeline_tag": "text-generation",
            "tags": ["transformers", "conversational"],
            "adapter_weights_path": "",
        },
        QWEN["id"]: {
            "author": "Qwen",
            "pipeline_tag": "text-generation",
            "tags": ["conversational"],
            "adapter_weights_path": "",
        },
        LORA["id"]: {
            "author": "someone",
            "pipeline_tag": "text-to-image",
            "tags": ["lora", "base_model:adapter:black-forest-labs/FLUX.1-dev"],
            "adapter_weights_path": "ghibli.safetensors",
        },
    }


@pytest.mark.django_db
@pytest.mark.parametrize("fmt", WRITERS)
def test_hub_models_import_of_the_same_file_twice_leaves_every_model_unchanged(tmp_path, fmt):
    path = WRITERS[fmt](tmp_path, RECORDS)
    import_file(path)
    before = {m.model_id: (m.hub_id, m.modified_at) for m in HubModel.objects.all()}

    assert import_file(path) == {"created": 0, "updated": 0, "unchanged": 3}

    after = {m.model_id: (m.hub_id, m.modified_at) for m in HubModel.objects.all()}
    assert after == before


@pytest.mark.django_db
def test_hub_models_import_with_one_record_s_tags_changed_updates_only_that_model(tmp_path):
    import_file(write_array(tmp_path, RECORDS))
    before = {m.model_id: m.modified_at for m in HubModel.objects.all()}
    changed = {**QWEN, "tags": ["conversational", "qwen3", "license:apache-2.0"]}

    result = import_file(write_array(tmp_path, [LLAMA, changed, LORA], name="v2.json"))

    assert result == {"created": 0, "updated": 1, "unchanged": 2}
    qwen = HubModel.objects.get(model_id=QWEN["id"])
    assert qwen.tags == ["conversational", "qwen3", "license:apache-2.0"]
    assert qwen.modified_at > before[QWEN["id"]]
    for model_id in (LLAMA["id"], LORA["id"]):
        assert HubModel.objects.get(model_id=model_id).modified_at == before[model_id]


@pytest.mark.django_db
def test_hub_models_import_counts_new_changed_and_unchanged_records_together(tmp_path):
    import_file(write_array(tmp_path, [LLAMA, QWEN]))
    moved = {**LLAMA, "pipeline_tag": "image-text-to-text"}

    result = import_file(write_lines(tmp_path, [moved, QWEN, LORA]))

    assert result == {"created": 1, "updated": 1, "unchanged": 1}
    assert HubModel.objects.get(model_id=LLAMA["id"]).pipeline_tag == "image-text-to-text"


@pytest.mark.django_db
def test_hub_models_import_without_author_uses_the_namespace_of_the_id(tmp_path):
    import_file(write_array(tmp_path, [{"id": "Some-Org/a-model", "tags": []}]))

    model = HubModel.objects.get(model_id="Some-Org/a-model")
    assert model.author == "Some-Org"
    assert model.pipeline_tag == ""
    assert model.tags == []


@pytest.mark.django_db
def test_hub_models_import_treats_null_optional_fields_as_absent(tmp_path):
    record = {"id": "Some-Org/a-model", "pipeline_tag": None, "author": None,
              "adapterWeightsPath": None}  # fmt: skip

    assert import_file(write_array(tmp_path, [record])) == {
        "created": 1,
        "updated": 0,
        "unchanged": 0,
    }

    model = HubModel.objects.get(model_id="Some-Org/a-model")
    assert (model.author, model.pipeline_tag, model.adapter_weights_path) == ("Some-Org", "", "")


@pytest.mark.django_db
def test_hub_models_import_keeps_an_explicit_author(tmp_path):
    import_file(write_array(tmp_path, [{"id": "mirror/a-model", "author": "original-author"}]))

    assert HubModel.objects.get(model_id="mirror/a-model").author == "original-author"


@pytest.mark.django_db
def test_hub_models_import_stores_adapter_weights_path(tmp_path):
    import_file(write_lines(tmp_path, [LLAMA, LORA]))

    assert HubModel.objects.get(model_id=LORA["id"]).adapter_weights_path == "ghibli.safetensors"
    assert HubModel.objects.get(model_id=LLAMA["id"]).adapter_weights_path == ""


@pytest.mark.django_db
@pytest.mark.parametrize("fmt", WRITERS)
def test_hub_models_import_of_an_id_repeated_in_one_file_keeps_the_last_record(tmp_path, fmt):
    first = {**QWEN, "tags": ["first"], "pipeline_tag": "text-generation"}
    last = {**QWEN, "tags": ["last"], "pipeline_tag": "image-text-to-text"}
    path = WRITERS[fmt](tmp_path, [first, LLAMA, last])

    result = import_file(path)

    assert result == {"created": 2, "updated": 0, "unchanged": 0}
    assert HubModel.objects.filter(model_id=QWEN["id"]).count() == 1
    qwen = HubModel.objects.get(model_id=QWEN["id"])
    assert qwen.tags == ["last"]
    assert qwen.pipeline_tag == "image-text-to-text"


# --- hub_models_import: all or nothing -----------------------------------------------------

BAD_RECORDS = [
    pytest.param({"id": "no-slash"}, id="id-without-slash"),
    pytest.param({"id": "a/b/c"}, id="id-with-two-slashes"),
    pytest.param({"id": "café/modèle"}, id="non-ascii-id"),
    pytest.param({"id": "org/name\n"}, id="id-with-trailing-newline"),
    pytest.param({"tags": []}, id="missing-id"),
    pytest.param({"id": "org/name", "tags": "lora"}, id="tags-not-a-list"),
    pytest.param({"id": "org/name", "tags": ["lora", 7]}, id="tags-with-a-number"),
    pytest.param({"id": "org/name", "pipeline_tag": 42}, id="pipeline-tag-a-number"),
    pytest.param({"id": "org/name", "pipeline_tag": 0}, id="pipeline-tag-zero"),
    pytest.param({"id": "org/name", "author": 0}, id="author-zero"),
    pytest.param({"id": "org/name", "adapterWeightsPath": 0}, id="weights-path-zero"),
    pytest.param({"id": "org/name", "downloads": 10}, id="unknown-field-downloads"),
    pytest.param(["org/name"], id="a-list-not-an-object"),
]


@pytest.mark.django_db
@pytest.mark.parametrize("fmt", WRITERS)
@pytest.mark.parametrize("bad", BAD_RECORDS)
def test_hub_models_import_with_a_bad_third_record_writes_nothing(tmp_path, fmt, bad):
    # LLAMA already exists with other tags: the file's valid update of it must not be applied.
    HubModel.objects.create(model_id=LLAMA["id"], author="meta-llama", tags=["old"])
    path = WRITERS[fmt](tmp_path, [LLAMA, QWEN, bad, LORA])

    with pytest.raises(CommandError, match=r"record 3\b"):
        run("hub_models_import", str(path))

    assert rows() == {
        LLAMA["id"]: {
            "author": "meta-llama",
            "pipeline_tag": "",
            "tags": ["old"],
            "adapter_weights_path": "",
        }
    }


@pytest.mark.django_db
def test_hub_models_import_reports_the_position_of_the_first_bad_record(tmp_path):
    path = write_array(tmp_path, [LLAMA, {"id": "bad"}, QWEN, {"id": "also-bad"}])

    with pytest.raises(CommandError) as excinfo:
        run("hub_models_import", str(path))

    assert "record 2" in str(excinfo.value)
    assert "'bad'" in str(excinfo.value)
    assert HubModel.objects.count() == 0


@pytest.mark.django_db
def test_hub_models_import_of_an_invalid_json_array_names_the_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"id": "org/one"},\n  {"id": "org/two",}\n]\n')

    with pytest.raises(CommandError, match=r"line 3\b"):
        run("hub_models_import", str(path))

    assert HubModel.objects.count() == 0


@pytest.mark.django_db
def test_hub_models_import_of_invalid_json_lines_names_the_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"id": "org/one"}\n\n{"id": "org/two"\n{"id": "org/three"}\n')

    with pytest.raises(CommandError, match=r"line 3\b"):
        run("hub_models_import", str(path))

    assert HubModel.objects.count() == 0


@pytest.mark.django_db
def test_hub_models_import_of_a_missing_file_fails(tmp_path):
    missing = tmp_path / "nope.json"

    with pytest.raises(CommandError, match=re.escape(str(missing))):
        run("hub_models_import", str(missing))

    assert HubModel.objects.count() == 0


def manage_import(path) -> subprocess.CompletedProcess:
    return manage_process("hub_models_import", str(path))


@pytest.mark.django_db(transaction=True)
def test_hub_models_import_process_exits_1_naming_the_bad_record_on_stderr(tmp_path):
    good = manage_import(write_array(tmp_path, [LLAMA]))
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout) == {"created": 1, "updated": 0, "unchanged": 0}

    bad = manage_import(write_lines(tmp_path, [QWEN, {"id": "Qwen/Qwen3-32B", "tags": [1]}, LORA]))

    assert bad.returncode == 1
    assert "record 2" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert bad.stdout == ""
    assert list(HubModel.objects.values_list("model_id", flat=True)) == [LLAMA["id"]]


# --- provider_create -------------------------------------------------------------------------

API_KEY = "sk-live-0123456789abcdef-clear"


@pytest.fixture
def together_org(db) -> Organization:
    return OrganizationFactory(name="togethercomputer", plan=OrgPlan.ENTERPRISE)


def provider_create(slug="together", *extra: str, org="togethercomputer") -> tuple[str, str]:
    return run(
        "provider_create",
        slug,
        "--org",
        org,
        "--base-url",
        "https://api.together.xyz",
        "--cost-url",
        "https://api.together.xyz/v1/costs",
        "--api-key",
        API_KEY,
        *extra,
    )


def test_provider_create_creates_the_provider_with_the_default_route_and_header(together_org):
    out, err = provider_create()

    assert out == "together\n"
    provider = Provider.objects.get(slug="together")
    assert provider.organization == together_org
    assert provider.base_url == "https://api.together.xyz"
    assert provider.cost_url == "https://api.together.xyz/v1/costs"
    assert provider.chat_route == "/v1/chat/completions"
    assert provider.request_id_header == "Inference-Id"
    assert provider.api_key == API_KEY
    assert provider.is_active
    assert API_KEY not in out + err


def test_provider_create_stores_a_given_chat_route_and_request_id_header(together_org):
    provider_create(
        "cohere",
        "--chat-route",
        "/compatibility/v1/chat/completions",
        "--request-id-header",
        "X-Request-Id",
    )

    provider = Provider.objects.get(slug="cohere")
    assert provider.chat_route == "/compatibility/v1/chat/completions"
    assert provider.request_id_header == "X-Request-Id"


@pytest.mark.parametrize(
    ("slug", "extra", "org", "reason"),
    [
        pytest.param("new-one", [], "ghost-org", "no organization named", id="unknown-org"),
        pytest.param("taken", [], "togethercomputer", "already exists", id="duplicate-slug"),
        pytest.param("Bad_Slug", [], "togethercomputer", "slug", id="bad-slug"),
        pytest.param(
            "new-one", ["--base-url", "ftp://x"], "togethercomputer", "base_url", id="ftp-url"
        ),
        pytest.param(
            "new-one", ["--base-url", "not a url"], "togethercomputer", "base_url", id="not-a-url"
        ),
        pytest.param(
            "new-one",
            ["--chat-route", "v1/chat/completions"],
            "togethercomputer",
            "chat_route",
            id="route-without-slash",
        ),
        pytest.param(
            "new-one",
            ["--request-id-header", "Inference Id"],
            "togethercomputer",
            "request_id_header",
            id="header-with-a-space",
        ),
    ],
)
def test_provider_create_failure_raises_command_error_and_creates_nothing(
    together_org, slug, extra, org, reason
):
    existing = ProviderFactory(slug="taken", organization=together_org, api_key="old-key")

    with pytest.raises(CommandError, match=re.escape(reason)):
        provider_create(slug, *extra, org=org)

    assert list(Provider.objects.values_list("slug", flat=True)) == ["taken"]
    existing.refresh_from_db()
    assert existing.base_url == "http://127.0.0.1:9/taken"
    assert existing.api_key == "old-key"
    assert Organization.objects.count() == 1


# --- the API key at rest ---------------------------------------------------------------------


def raw_provider_row(slug: str) -> dict:
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM registry_provider WHERE slug = %s", [slug])
        columns = [c.name for c in cursor.description]
        row = cursor.fetchone()
    return dict(zip(columns, row, strict=True))


def test_provider_api_key_is_encrypted_in_the_database(together_org):
    provider_create()

    row = raw_provider_row("together")
    assert row["slug"] == "together"  # the raw read does see the row
    for value in row.values():
        assert API_KEY not in str(value)
    assert row["api_key"].startswith("fernet:")
    assert Provider.objects.get(slug="together").api_key == API_KEY


def test_provider_api_key_is_encrypted_differently_each_time(together_org):
    provider_create("one")
    provider_create("two")

    assert raw_provider_row("one")["api_key"] != raw_provider_row("two")["api_key"]
    assert Provider.objects.get(slug="one").api_key == Provider.objects.get(slug="two").api_key


def test_provider_api_key_still_decrypts_after_a_new_key_is_prepended(together_org):
    provider_create()
    old_key = settings.FIELD_ENCRYPTION_KEY
    stored_under_old_key = raw_provider_row("together")["api_key"]

    with override_settings(FIELD_ENCRYPTION_KEY=f"new-key,{old_key}"):
        provider = Provider.objects.get(slug="together")
        assert provider.api_key == API_KEY
        provider.save()  # re-encrypts with the first (new) key
    rotated = raw_provider_row("together")["api_key"]
    assert rotated.startswith("fernet:")
    assert rotated != stored_under_old_key

    with override_settings(FIELD_ENCRYPTION_KEY="new-key"):
        assert Provider.objects.get(slug="together").api_key == API_KEY


def test_provider_api_key_read_with_an_unrelated_key_raises_improperly_configured(
    together_org,
):
    provider_create()

    with (
        override_settings(FIELD_ENCRYPTION_KEY="a-completely-different-key"),
        pytest.raises(ImproperlyConfigured, match="FIELD_ENCRYPTION_KEY"),
    ):
        Provider.objects.get(slug="together")

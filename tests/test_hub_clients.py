"""Real clients against a live test server: huggingface_hub's Hub API calls, and a partner's
sync script over HTTP. Nothing is mocked."""

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi

from accounts.models import Role
from accounts.tests.factories import MembershipFactory, UserFactory, token_for
from registry.models import HubModel, Mapping
from registry.tests.factories import (
    HubModelFactory,
    MappingFactory,
    ProviderFactory,
    TagFilterMappingFactory,
)

BASE_DIR = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
QWEN = "Qwen/Qwen2.5-72B-Instruct"
FLUX = "black-forest-labs/FLUX.1-dev"
LORA = "alvdansen/littletinies"


@pytest.fixture
def catalog():
    together, groq, fal = (ProviderFactory(slug=s) for s in ("together", "groq", "fal-ai"))
    llama = HubModelFactory(model_id=LLAMA)
    qwen = HubModelFactory(model_id=QWEN)
    flux = HubModelFactory(model_id=FLUX, pipeline_tag="text-to-image", tags=["diffusers"])
    HubModelFactory(
        model_id=LORA,
        pipeline_tag="text-to-image",
        tags=["lora", "base_model:adapter:black-forest-labs/FLUX.1-dev", "diffusers"],
        adapter_weights_path="littletinies.safetensors",
    )
    HubModelFactory(model_id="nobody/serves-this")
    MappingFactory(provider=together, hub_model=llama, provider_model="llama-turbo")
    MappingFactory(provider=groq, hub_model=llama, provider_model="llama-3.1-8b-instant")
    MappingFactory(provider=together, hub_model=qwen, task="text-generation",
                   provider_model="qwen-72b")  # fmt: skip
    MappingFactory(provider=fal, hub_model=flux, task="text-to-image", provider_model="fal/flux")
    TagFilterMappingFactory(provider=fal, provider_model="fal-ai/flux-lora")
    return {"together": together, "groq": groq, "fal": fal}


def test_model_info_returns_the_registry_mapping(live_server, catalog):
    api = HfApi(endpoint=live_server.url)

    info = api.model_info(LLAMA, expand=["inferenceProviderMapping", "inference"])

    assert info.id == LLAMA
    assert info.inference == "warm"
    mapping = {m.provider: m for m in info.inference_provider_mapping}
    assert list(mapping) == ["groq", "together"]
    assert mapping["together"].provider_id == "llama-turbo"
    assert mapping["groq"].provider_id == "llama-3.1-8b-instant"
    assert {m.status for m in mapping.values()} == {"live"}
    assert {m.task for m in mapping.values()} == {"conversational"}


def test_model_info_of_a_lora_carries_the_adapter(live_server, catalog):
    info = HfApi(endpoint=live_server.url).model_info(LORA, expand=["inferenceProviderMapping"])
    (fal,) = info.inference_provider_mapping
    assert fal.provider == "fal-ai"
    assert fal.provider_id == "fal-ai/flux-lora"
    assert fal.adapter == "lora"
    assert fal.adapter_weights_path == "littletinies.safetensors"
    assert fal.type == "tag-filter"


def test_model_info_with_a_users_token_lists_providers_in_that_users_order(live_server, catalog):
    fal_fan = UserFactory(username="prefers-together")
    token = token_for(fal_fan)
    put = httpx.put(
        f"{live_server.url}/api/settings/inference-providers",
        json={"order": ["together", "fal-ai", "groq"]},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert put.status_code == 200, put.text
    api = HfApi(endpoint=live_server.url)

    mine = api.model_info(LLAMA, expand=["inferenceProviderMapping"], token=token)
    anonymous = api.model_info(LLAMA, expand=["inferenceProviderMapping"], token=False)
    listed = {
        m.id: [p.provider for p in m.inference_provider_mapping]
        for m in api.list_models(
            inference_provider="all", expand=["inferenceProviderMapping"], token=token
        )
    }

    assert [m.provider for m in mine.inference_provider_mapping] == ["together", "groq"]
    assert [m.provider for m in anonymous.inference_provider_mapping] == ["groq", "together"]
    assert listed[LLAMA] == ["together", "groq"]


def test_a_partial_order_puts_the_named_providers_first_then_the_default_order(
    live_server, catalog
):
    cerebras = ProviderFactory(slug="cerebras")
    MappingFactory(provider=cerebras, hub_model=HubModel.objects.get(model_id=LLAMA))
    user = UserFactory(username="likes-together")
    user.provider_order = ["together"]
    user.save()

    info = HfApi(endpoint=live_server.url).model_info(
        LLAMA, expand=["inferenceProviderMapping"], token=token_for(user)
    )

    assert [m.provider for m in info.inference_provider_mapping] == [
        "together", "cerebras", "groq",
    ]  # fmt: skip


def test_list_models_filters_by_provider_and_task(live_server, catalog):
    api = HfApi(endpoint=live_server.url)

    together_llms = list(
        api.list_models(inference_provider="together", pipeline_tag="text-generation")
    )
    either = list(api.list_models(inference_provider=["together", "groq"]))
    anyone = list(api.list_models(inference_provider="all", expand=["inferenceProviderMapping"]))

    assert sorted(m.id for m in together_llms) == sorted([LLAMA, QWEN])
    assert sorted(m.id for m in either) == sorted([LLAMA, QWEN])
    assert sorted(m.id for m in anyone) == sorted([LLAMA, QWEN, FLUX, LORA])
    providers = {m.id: sorted(p.provider for p in m.inference_provider_mapping) for m in anyone}
    assert providers[LLAMA] == ["groq", "together"]
    assert providers[LORA] == ["fal-ai"]


def test_list_models_follows_pagination(live_server):
    for i in range(7):
        HubModelFactory(model_id=f"page/model-{i}")
    api = HfApi(endpoint=live_server.url)
    # `limit` bounds the total; the client follows Link headers page by page otherwise.
    assert len(list(api.list_models(author="page"))) == 7
    assert len(list(api.list_models(author="page", limit=3))) == 3


def test_the_client_reads_hf_endpoint_from_the_environment(live_server, catalog):
    script = (
        "import json; from huggingface_hub import model_info, list_models;"
        f"i = model_info({LLAMA!r}, expand=['inferenceProviderMapping']);"
        "ids = [m.id for m in list_models(inference_provider='groq')];"
        "print(json.dumps({'providers': [m.provider for m in i.inference_provider_mapping],"
        " 'groq': ids}))"
    )
    env = {**os.environ, "HF_ENDPOINT": live_server.url, "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_TOKEN", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"providers": ["groq", "together"], "groq": [LLAMA]}


def run_sync(live_server, token: str, items_file: Path, *extra: str) -> dict:
    env = {**os.environ, "HF_TOKEN": token}
    done = subprocess.run(
        [sys.executable, str(BASE_DIR / "scripts" / "partner_sync.py"), "--endpoint",
         live_server.url, "--provider", "together", str(items_file), *extra],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def test_a_partner_sync_script_creates_lists_sets_live_and_deletes(live_server, tmp_path):
    together = ProviderFactory(slug="together")
    engineer = UserFactory(username="together-engineer")
    MembershipFactory(user=engineer, organization=together.organization, role=Role.WRITE)
    token = token_for(engineer, "fine-grained", ["org.write"])  # what mapping writes need
    HubModelFactory(model_id=LLAMA)
    HubModelFactory(model_id=FLUX, pipeline_tag="text-to-image", tags=["diffusers"])
    items = [
        {"task": "conversational", "hfModel": LLAMA, "providerModel": "llama-turbo"},
        {"type": "tag-filter", "task": "text-to-image", "adapterType": "lora",
         "tags": [f"base_model:adapter:{FLUX}", "lora"], "providerModel": "lora-endpoint"},
    ]  # fmt: skip
    items_file = tmp_path / "mappings.json"
    items_file.write_text(json.dumps(items))

    assert run_sync(live_server, token, items_file) == {"created": 2, "existing": 0, "live": 2}
    assert set(Mapping.objects.values_list("status", flat=True)) == {"live"}
    # The hourly job runs again: 409s mean "exists", nothing is duplicated.
    assert run_sync(live_server, token, items_file) == {"created": 0, "existing": 2, "live": 2}
    assert Mapping.objects.count() == 2

    assert run_sync(live_server, token, items_file, "--delete") == {"deleted": 2}
    assert Mapping.objects.count() == 0

import pytest

from billing.models import UsageRecord

from .conftest import LLAMA, chat

pytestmark = pytest.mark.e2e


def test_a_chat_completion_is_routed_and_recorded(server, catalog, pro_token):
    response = chat(server, pro_token)

    assert response.status_code == 200, response.text
    assert response.headers["x-inference-provider"] == "groq"
    request_id = response.headers["inference-id"]
    record = UsageRecord.objects.get()
    assert (record.request_id, record.provider.slug, record.state) == (
        request_id,
        "groq",
        "pending",
    )
    assert record.hub_model_id == LLAMA
    assert record.prompt_tokens is not None

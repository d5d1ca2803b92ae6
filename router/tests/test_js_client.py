"""The unmodified @huggingface/inference client (Node.js), against the live server and the
provider simulator: named provider (mapping lookup on the Hub API, then
`/together/v1/chat/completions`), streaming, the auto router and `endpointUrl` mode, with
`billTo`. Installed by scripts/bootstrap.sh from tests/js/package.json."""

import json
import shutil
import subprocess

import pytest

from billing.models import BillingAccount, UsageRecord
from testsupport.processes import REPO_ROOT

from .conftest import LLAMA

pytestmark = pytest.mark.e2e
JS_DIR = REPO_ROOT / "tests" / "js"
NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed on this machine")
def test_the_js_client_is_routed_recorded_and_billed_to_the_org(
    server, catalog, pro_token, team_org
):
    assert (JS_DIR / "node_modules" / "@huggingface" / "inference").is_dir(), (
        "run scripts/bootstrap.sh: it installs the JavaScript client"
    )
    done = subprocess.run(
        [NODE, "chat.mjs", server, pro_token, LLAMA, team_org.name],
        cwd=JS_DIR, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert set(out) == {"named", "namedStream", "auto", "endpoint"}
    assert all(text.strip() for text in out.values()), out
    records = list(UsageRecord.objects.select_related("provider").order_by("id"))
    org_payer = BillingAccount.objects.get(organization=team_org)
    # named, named stream and auto carry billTo; endpointUrl mode has no billTo option.
    assert [r.provider.slug for r in records] == ["together", "together", "groq", "groq"]
    assert [r.payer_id == org_payer.pk for r in records] == [True, True, True, False]
    assert {r.state for r in records} == {"pending"}
    assert {r.hub_model_id for r in records} == {LLAMA}

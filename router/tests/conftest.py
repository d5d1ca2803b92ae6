"""Fixtures for the router suites: the real web server (uvicorn + config.asgi) and the provider
simulator, both real processes; the test database is shared with them (transactional tests)."""

import httpx
import pytest

from accounts.models import Role
from accounts.tests.factories import MembershipFactory, OrganizationFactory, UserFactory, token_for
from registry.tests.factories import HubModelFactory, MappingFactory, ProviderFactory
from testsupport.processes import WebServer

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
MESSAGES = [{"role": "user", "content": "Hello!"}]


@pytest.fixture(scope="session")
def web_server(tmp_path_factory, django_db_setup, django_db_blocker):
    server = WebServer(tmp_path_factory.mktemp("web") / "uvicorn.log").start()
    yield server
    server.stop()


@pytest.fixture
def server(web_server, transactional_db):
    """The web server's URL, for a test whose data the server must see."""
    return web_server.url


@pytest.fixture
def sim(simulator_url):
    """Resets the simulator's providers after the test (faults, counters)."""
    yield simulator_url
    httpx.post(f"{simulator_url}/_sim/reset")


def make_provider(sim_url: str, slug: str, **fields):
    return ProviderFactory(
        slug=slug,
        base_url=f"{sim_url}/{slug}",
        cost_url=f"{sim_url}/{slug}/costs",
        api_key=f"sim-{slug}-key",
        **fields,
    )


@pytest.fixture
def catalog(sim):
    """LLAMA served live by together and groq (Groq's own route), with prices and speeds."""
    together = make_provider(sim, "together")
    groq = make_provider(sim, "groq", chat_route="/openai/v1/chat/completions")
    llama = HubModelFactory(model_id=LLAMA)
    MappingFactory(
        provider=together,
        hub_model=llama,
        provider_model="llama-turbo",
        status="live",
        input_price_nanousd_per_mtok=180_000_000,
        output_price_nanousd_per_mtok=180_000_000,
        throughput_tps=120.0,
    )
    MappingFactory(provider=groq, hub_model=llama, provider_model="llama-3.1-8b-instant",
                   status="live", input_price_nanousd_per_mtok=50_000_000,
                   output_price_nanousd_per_mtok=80_000_000, throughput_tps=800.0)  # fmt: skip
    return {"together": together, "groq": groq, "llama": llama}


@pytest.fixture
def pro_user(transactional_db):
    return UserFactory(username="router-pro", plan="pro")


@pytest.fixture
def pro_token(pro_user) -> str:
    return token_for(pro_user, "write")


@pytest.fixture
def team_org(pro_user):
    org = OrganizationFactory(name="router-team", plan="team", seats=2)
    MembershipFactory(user=pro_user, organization=org, role=Role.WRITE)
    return org


def chat(server: str, token: str | None, model: str = LLAMA, *, headers=None, **body):
    request_headers = {"Authorization": f"Bearer {token}"} if token else {}
    request_headers.update(headers or {})
    return httpx.post(
        f"{server}/v1/chat/completions",
        json={"model": model, "messages": MESSAGES, **body},
        headers=request_headers,
        timeout=30,
    )

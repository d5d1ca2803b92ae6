"""The authorization matrix (issue 12): every endpoint x every kind of caller, over HTTP.

The expected table is `authz_matrix.csv` next to this file (its header explains the rows,
the columns and the cell values). `test_the_table_names_every_endpoint` fails when a URL
pattern, an HTTP method it serves, a router route or a custom admin action has no row, or
when a row names one that no longer exists. `test_cell` performs one request per cell:

- Django's URLs (API and admin) through Django's test client, in-process, as HTTPS with CSRF
  checks on (a browser session sends its CSRF token, as the admin's pages do);
- the router's routes with httpx against a real web server (uvicorn + `config.asgi`) and the
  provider simulator;
- admin actions by POSTing the change list's action form, then reading the target back: an
  action that is refused must change nothing.

One world is seeded per module and committed (the web server reads it); every cell runs in a
transaction that is rolled back, so a cell that deletes or revokes leaves the world as it was.
"""

from __future__ import annotations

import csv
import json
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from django.conf import settings
from django.contrib import admin
from django.contrib.admin import helpers
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.views.generic import RedirectView

from accounts import services as accounts_services
from accounts.models import AccessToken, Role, SettingsSource, TokenRole, User
from accounts.permissions import FINE_GRAINED_PERMISSIONS
from accounts.services import Actor
from accounts.tests.factories import MembershipFactory, OrganizationFactory, UserFactory
from billing import services as billing_services
from billing.models import (
    LedgerEntry,
    LedgerTransaction,
    ProviderBillingHealth,
    UsageRecord,
    UsageState,
)
from billing.tests.factories import pending_usage
from core.models import Heartbeat
from registry import services as registry_services
from registry.models import Mapping, MappingStatus
from registry.tests.factories import HubModelFactory, MappingFactory, ProviderFactory
from router import proxy
from testsupport.processes import WebServer

TABLE = Path(__file__).with_name("authz_matrix.csv")
PRINCIPALS = (
    "anonymous", "read", "write", "fg_without", "fg_with", "other_org", "org_admin",
    "view_staff", "superuser",
)  # fmt: skip
SESSION_PRINCIPALS = frozenset({"view_staff", "superuser"})
SURFACES = ("django", "router", "action")
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")  # HEAD and OPTIONS follow GET's rules
WORD_CELLS = frozenset({"ok", "login", "refused", "-"})  # and an HTTP error status: "403"
# The router's routes (router/proxy.py): the OpenAI route and the named-provider form.
ROUTER_ROUTES = {("POST", proxy.CHAT_PATH), ("POST", "/<provider>/<route>")}
ADMIN_FORM_VIEWS = ("_changelist", "_add", "_change", "_delete", "password_change")
USD = 1_000_000_000
LIVE_MODEL = "acme-labs/chat-live"
STAGING_MODEL = "acme-labs/chat-staging"
UNMAPPED_MODEL = "acme-labs/unmapped"
CSRF_SECRET = "authzmatrixcsrfsecret0123456789a"  # 32 characters: an unmasked CSRF secret
ORIGIN = "https://testserver"


# --- the table -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    surface: str
    method: str
    path: str
    variant: str
    permission: str
    expected: dict[str, str] = field(hash=False, compare=False)

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.surface, self.method, self.path, self.variant)

    @property
    def name(self) -> str:
        variant = f" [{self.variant}]" if self.variant else ""
        return f"{self.method} {self.path}{variant}"


def load_table(path: Path = TABLE) -> list[Row]:
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    reader = csv.DictReader(lines, skipinitialspace=True)
    rows = []
    for record in reader:
        record = {k.strip(): (v or "").strip() for k, v in record.items()}
        rows.append(
            Row(
                surface=record["surface"],
                method=record["method"],
                path=record["path"],
                variant=record["variant"],
                permission=record["permission"],
                expected={p: record[p] for p in PRINCIPALS},
            )
        )
    return rows


ROWS = load_table()


# --- what exists ----------------------------------------------------------------------------
def url_patterns(resolver=None, prefix: str = "/"):
    """(path as Django spells it, pattern) of every URL pattern, the admin's included."""
    resolver = resolver or get_resolver()
    for pattern in resolver.url_patterns:
        if isinstance(pattern, URLResolver):
            yield from url_patterns(pattern, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern), pattern


def served_methods(path: str, pattern: URLPattern) -> set[str]:
    """The methods a pattern serves that matter. Class-based views: the handlers they define.
    The admin: GET, plus POST for the pages with a form (logout is POST only). Plain
    redirects and the catch-all 404s answer every method alike: one GET row stands for all.
    Other function views: the methods that do not answer 405."""
    view_class = getattr(pattern.callback, "view_class", None)
    if view_class is not None and issubclass(view_class, RedirectView):
        return {"GET"}
    if view_class is not None:
        return {m for m in HTTP_METHODS if hasattr(view_class, m.lower())}
    name = pattern.name or ""
    if path.startswith("/admin/"):
        if name == "logout":
            return {"POST"}
        if name == "login" or name.endswith(ADMIN_FORM_VIEWS):
            return {"GET", "POST"}
        return {"GET"}
    if not name:  # the JSON 404 catch-alls under /api/ and /v1/
        return {"GET"}
    client = Client()
    url = concrete_url(path, World.placeholder())
    return {m for m in HTTP_METHODS if client.generic(m, url, secure=True).status_code != 405}


def admin_actions() -> set[tuple[str, str]]:
    """(change list path, action name) of every custom action of a registered ModelAdmin."""
    found = set()
    for model, model_admin in admin.site._registry.items():
        changelist = f"/admin/{model._meta.app_label}/{model._meta.model_name}/"
        for action in model_admin.actions or ():
            found.add((changelist, action if isinstance(action, str) else action.__name__))
    return found


# --- the world --------------------------------------------------------------------------------
@dataclass
class World:
    """What the cells act on. `acme` (team plan) owns provider `acme-sim` (the simulator) with
    a live and a staging mapping; `member` is a `write`-role member of acme, `boss` its admin,
    `outsider` the admin of another organization; `viewer` is staff with only view_*
    permissions, `root` a superuser."""

    provider: str = ""
    provider_model_live: str = ""
    provider_model_staging: str = ""
    org: str = ""
    staging_mapping: str = ""
    spare_token_id: int = 0
    member: str = ""
    keys_provider: str = ""
    tokens: dict[str, str] = field(default_factory=dict)  # principal -> secret
    fine_grained: dict[tuple[str, str], str] = field(default_factory=dict)  # (side, perm)
    sessions: dict[str, str] = field(default_factory=dict)  # principal -> session key
    admin_objects: dict[str, int] = field(default_factory=dict)  # "app/model" -> pk
    action_targets: dict[str, int] = field(default_factory=dict)
    user_content_type: int = 0
    server: str = ""

    @classmethod
    def placeholder(cls) -> World:
        """Enough to build URLs that resolve (for probing which methods a view serves)."""
        return cls(provider="nobody", org="nobody", staging_mapping="0" * 24, spare_token_id=1,
                   member="nobody", keys_provider="nobody", user_content_type=1)  # fmt: skip


def fine_grained_sets() -> dict[tuple[str, str], list[str]]:
    """The fine-grained tokens of `member`: for each permission P (and "" for rows naming
    none), one without P (every other permission; none at all for "") and one with only P
    (every permission for "")."""
    everything = sorted(FINE_GRAINED_PERMISSIONS)
    sets = {("without", ""): [], ("with", ""): everything}
    for permission in everything:
        sets[("without", permission)] = [p for p in everything if p != permission]
        sets[("with", permission)] = [permission]
    return sets


def token(user: User, role: str, permissions=()) -> str:
    _, secret = accounts_services.access_token_create(
        user=user, name=f"authz {role}", role=role, permissions=permissions
    )
    return secret


def seed(simulator_url: str) -> World:
    world = World()
    acme = OrganizationFactory(name="acme", plan="team", seats=3)
    rival = OrganizationFactory(name="rival", plan="team", seats=2)
    dormant = OrganizationFactory(name="dormant", plan="free", seats=1)
    member = UserFactory(username="member", plan="pro")
    boss = UserFactory(username="boss", plan="pro")
    outsider = UserFactory(username="outsider", plan="pro")
    bystander = UserFactory(username="bystander", plan="free")
    leaver = UserFactory(username="leaver", plan="free")  # no settings history: deletable
    viewer = UserFactory(username="viewer", plan="pro", is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename__startswith="view_"))
    root = UserFactory(username="root", plan="pro", is_staff=True, is_superuser=True)
    MembershipFactory(user=member, organization=acme, role=Role.WRITE)
    MembershipFactory(user=boss, organization=acme, role=Role.ADMIN)
    MembershipFactory(user=outsider, organization=rival, role=Role.ADMIN)
    bystander_membership = MembershipFactory(user=bystander, organization=acme, role=Role.READ)

    slug = f"acme-sim-{uuid.uuid4().hex[:6]}"  # its own simulator state
    provider = ProviderFactory(
        slug=slug,
        organization=acme,
        base_url=f"{simulator_url}/{slug}",
        cost_url=f"{simulator_url}/{slug}/costs",
        api_key=f"sim-{slug}-key",
    )
    keys_provider = ProviderFactory(slug="keys-target", organization=rival)
    live_model = HubModelFactory(model_id=LIVE_MODEL)
    staging_model = HubModelFactory(model_id=STAGING_MODEL)
    unmapped = HubModelFactory(model_id=UNMAPPED_MODEL)
    prices = {"input_price_nanousd_per_mtok": 100_000_000,
              "output_price_nanousd_per_mtok": 100_000_000, "context_length": 8192}  # fmt: skip
    live = MappingFactory(provider=provider, hub_model=live_model, provider_model="chat-live-1",
                          status=MappingStatus.LIVE, **prices)  # fmt: skip
    staging = MappingFactory(provider=provider, hub_model=staging_model,
                             provider_model="chat-staging-1", status=MappingStatus.STAGING,
                             **prices)  # fmt: skip

    world.provider, world.org, world.member = slug, acme.name, member.username
    world.provider_model_live, world.provider_model_staging = "chat-live-1", "chat-staging-1"
    world.staging_mapping, world.keys_provider = staging.public_id, keys_provider.slug
    world.tokens = {
        "read": token(member, TokenRole.READ),
        "write": token(member, TokenRole.WRITE),
        "other_org": token(outsider, TokenRole.WRITE),
        "org_admin": token(boss, TokenRole.WRITE),
    }
    world.fine_grained = {
        key: token(member, TokenRole.FINE_GRAINED, permissions)
        for key, permissions in fine_grained_sets().items()
    }
    spare, _ = accounts_services.access_token_create(user=member, name="spare", role="read")
    world.spare_token_id = spare.pk
    for user in (member, boss, outsider, viewer, root, bystander):
        registry_services.user_provider_settings_update(
            user=user, actor=Actor(user=user, source=SettingsSource.API),
            keys={keys_provider.slug: f"custom-key-of-{user.username}-0123456789"},
        )  # fmt: skip
    for principal, user in (("view_staff", viewer), ("superuser", root)):
        client = Client()
        client.force_login(user)
        world.sessions[principal] = client.cookies[settings.SESSION_COOKIE_NAME].value

    # Billing: acme's account with a top-up, a pending record and one held for review.
    account = billing_services.billing_account_get_or_create_for_organization(organization=acme)
    top_up = billing_services.credits_top_up(
        billing_account=account, amount_nanousd=5 * USD, actor="seed", idempotency_key="seed"
    )
    pending = pending_usage(provider=provider, payer=account, request_id="authz-pending")
    UsageRecord.objects.filter(pk=pending.pk).update(user=member)
    held = pending_usage(provider=provider, payer=account, request_id="authz-held")
    UsageRecord.objects.filter(pk=held.pk).update(user=member, estimated_cost_nanousd=1_000)
    billing_services.cost_batch_apply(provider=provider, costs={"authz-held": 50 * USD})
    assert UsageRecord.objects.get(pk=held.pk).state == UsageState.HELD

    world.admin_objects = {
        "auth/group": Group.objects.create(name="auditors").pk,
        "core/heartbeat": Heartbeat.objects.create(source="seed", worker="authz").pk,
        "accounts/membership": bystander_membership.pk,
        "accounts/accesstoken": spare.pk,
        "accounts/settingschange": bystander.settings_changes.first().pk,
        "accounts/user": leaver.pk,
        "accounts/organization": dormant.pk,
        "registry/provider": keys_provider.pk,
        "registry/hubmodel": unmapped.pk,
        "registry/mapping": staging.pk,
        "billing/billingaccount": account.pk,
        "billing/ledgertransaction": top_up.pk,
        "billing/ledgerentry": LedgerEntry.objects.filter(transaction=top_up).first().pk,
        "billing/usagerecord": pending.pk,
        "billing/providerbillinghealth": ProviderBillingHealth.objects.get(provider=provider).pk,
    }
    world.action_targets = {
        "revoke": spare.pk,
        "set_live": staging.pk,
        "set_staging": live.pk,
        "grant_credits": account.pk,
        "top_up": account.pk,
        "adjust": account.pk,
        "approve_held": held.pk,
        "reject_held": held.pk,
    }
    world.user_content_type = ContentType.objects.get_for_model(User).pk
    return world


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker, simulator_url, tmp_path_factory):
    """The world, committed (the web server reads it), and a web server serving the router;
    everything is removed afterwards."""
    with django_db_blocker.unblock():
        try:
            world = seed(simulator_url)
            server = WebServer(tmp_path_factory.mktemp("authz") / "uvicorn.log").start()
        except BaseException:
            call_command("flush", interactive=False, verbosity=0)
            raise
    world.server = server.url
    try:
        yield world
    finally:
        server.stop()
        with django_db_blocker.unblock():
            call_command("flush", interactive=False, verbosity=0)


# --- requests ---------------------------------------------------------------------------------
def concrete_url(path: str, w: World) -> str:
    """A URL pattern with its placeholders filled from the world."""
    replacements = {
        "<str:provider>": w.provider,
        "<str:mapping_id>": w.staging_mapping,
        "<int:token_id>": str(w.spare_token_id),
        "<str:namespace>/<str:name>": LIVE_MODEL,
        "<path:model_id>": LIVE_MODEL,
        "<str:name>": w.org,
        "<id>": str(w.admin_objects.get("accounts/user", 1)),
        "<path:content_type_id>/<path:object_id>": f"{w.user_content_type}/"
        f"{w.admin_objects.get('accounts/user', 1)}",
        "^(?P<app_label>auth|core|accounts|registry|billing)/$": "accounts/",
        "(?P<url>.*)$": "nothing-here/",
        "^v1/": "v1/nothing-here",
        "^api/": "api/nothing-here",
    }
    url = path
    if "/settings/inference-providers/keys/" in path:
        url = url.replace("<str:provider>", w.keys_provider)
    for placeholder, value in replacements.items():
        url = url.replace(placeholder, value)
    if "<path:object_id>" in url:
        app, model = url.split("/")[2:4]
        url = url.replace("<path:object_id>", str(w.admin_objects.get(f"{app}/{model}", 1)))
    assert "<" not in url and "(?" not in url, f"no value for a placeholder of {path}"
    return url


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def mapping_create_body(w: World) -> dict:
    return {"task": "conversational", "hfModel": UNMAPPED_MODEL, "providerModel": "unmapped-1"}


def usage_ingest_body(w: World) -> dict:
    return {
        "records": [
            {"provider": w.provider, "requestId": unique("ingest"), "user": w.member,
             "hubModel": LIVE_MODEL, "httpStatus": 200, "promptTokens": 1,
             "completionTokens": 1}
        ]
    }  # fmt: skip


# (method, path, variant) -> (query string, JSON body) for the API's rows.
API_REQUESTS: dict[tuple[str, str, str], Callable[[World], tuple[str, dict | None]]] = {
    ("POST", "/api/settings/tokens", "read"): lambda w: (
        "", {"name": unique("t"), "role": "read"}),
    ("POST", "/api/settings/tokens", "write"): lambda w: (
        "", {"name": unique("t"), "role": "write"}),
    ("POST", "/api/settings/tokens", "fine-grained"): lambda w: (
        "", {"name": unique("t"), "role": "fine-grained", "permissions": ["tokens.write"]}),
    ("POST", "/api/organizations", ""): lambda w: ("", {"name": unique("new-org")}),
    ("POST", "/api/partners/<str:provider>/models", ""): lambda w: ("", mapping_create_body(w)),
    ("DELETE", "/api/partners/<str:provider>/models", ""): lambda w: (
        f"hfModel={STAGING_MODEL}", None),
    ("PUT", "/api/partners/<str:provider>/models/status", ""): lambda w: (
        "", {"hfModel": STAGING_MODEL, "status": "live"}),
    ("PUT", "/api/partners/<str:provider>/models/<str:mapping_id>/status", ""): lambda w: (
        "", {"status": "live"}),
    ("PUT", "/api/settings/inference-providers", ""): lambda w: ("", {"order": []}),
    ("PUT", "/api/organizations/<str:name>/settings/inference-providers", ""): lambda w: (
        "", {"disabledProviders": []}),
    ("POST", "/api/billing/usage", ""): lambda w: ("", usage_ingest_body(w)),
    ("GET", "/admin/autocomplete/", ""): lambda w: (
        "app_label=accounts&model_name=membership&field_name=user", None),
}  # fmt: skip


# The last segment of an admin path -> the form a POST sends.
ADMIN_FORMS: dict[str, Callable[[], dict]] = {
    "delete": lambda: {"post": "yes"},  # the confirmation: really deletes
    # A stranger's login, refused (no password: the form says so without hashing one).
    "login": lambda: {"username": unique("stranger")},
}


def credentials(w: World, principal: str, row: Row) -> tuple[str | None, str | None]:
    """(bearer secret, session key) of a principal for a row."""
    if principal == "anonymous":
        return None, None
    if principal in SESSION_PRINCIPALS:
        return None, w.sessions[principal]
    if principal in ("fg_without", "fg_with"):
        side = principal.removeprefix("fg_")
        return w.fine_grained[(side, row.permission)], None
    return w.tokens[principal], None


def django_client(w: World, principal: str, row: Row) -> tuple[Client, dict]:
    """A client as the principal: a bearer token, or a browser session with its CSRF token
    (production's checks: HTTPS, CSRF enforced)."""
    secret, session = credentials(w, principal, row)
    client = Client(enforce_csrf_checks=True)
    client.cookies[settings.CSRF_COOKIE_NAME] = CSRF_SECRET
    headers = {"HTTP_ORIGIN": ORIGIN, settings.CSRF_HEADER_NAME: CSRF_SECRET}
    if session:
        client.cookies[settings.SESSION_COOKIE_NAME] = session
    if secret:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {secret}"
    return client, headers


def classify(client: Client, response, headers: dict) -> str:
    """The cell value of a response (see the table's header)."""
    status = response.status_code
    if 300 <= status < 400:
        target = urlsplit(response.get("Location", "")).path
        if target == "/admin/login/":
            return "login"
        if target == "/admin/":  # logout redirects there; the index then asks to log in
            again = client.get(target, secure=True, **headers)
            if again.status_code == 302 and urlsplit(again["Location"]).path == "/admin/login/":
                return "login"
        return "ok"
    return "ok" if 200 <= status < 300 else str(status)


def django_cell(w: World, row: Row, principal: str) -> tuple[str, str]:
    client, headers = django_client(w, principal, row)
    url = concrete_url(row.path, w)
    build = API_REQUESTS.get((row.method, row.path, row.variant))
    query, body = build(w) if build else ("", None)
    if query:
        url = f"{url}?{query}"
    if row.path.startswith("/admin/"):
        data = ADMIN_FORMS.get(row.path.rsplit("/", 2)[-2], dict)()
        if row.path == "/admin/login/":  # a stranger's failed login: its own address
            headers["REMOTE_ADDR"] = f"198.18.{secrets.randbelow(256)}.{secrets.randbelow(256)}"
        response = (
            client.post(url, data, secure=True, **headers)
            if row.method == "POST"
            else client.get(url, secure=True, **headers)
        )
    else:
        response = client.generic(
            row.method, url, data=b"" if body is None else json.dumps(body),
            content_type="application/json", secure=True, **headers,
        )  # fmt: skip
    return classify(client, response, headers), response.content[:300].decode(errors="replace")


# --- the router --------------------------------------------------------------------------------
ROUTER_REQUESTS: dict[tuple[str, str], Callable[[World], tuple[str, str, dict]]] = {
    (proxy.CHAT_PATH, "self"): lambda w: (proxy.CHAT_PATH, LIVE_MODEL, {}),
    (proxy.CHAT_PATH, "bill-to"): lambda w: (proxy.CHAT_PATH, LIVE_MODEL,
                                             {"X-HF-Bill-To": w.org}),
    (proxy.CHAT_PATH, "staging"): lambda w: (proxy.CHAT_PATH, STAGING_MODEL, {}),
    ("/<provider>/<route>", "live"): lambda w: (f"/{w.provider}/v1/chat/completions",
                                                w.provider_model_live, {}),
    ("/<provider>/<route>", "staging"): lambda w: (f"/{w.provider}/v1/chat/completions",
                                                   w.provider_model_staging, {}),
}  # fmt: skip


def router_cell(w: World, row: Row, principal: str) -> tuple[str, str]:
    path, model, headers = ROUTER_REQUESTS[(row.path, row.variant)](w)
    secret, session = credentials(w, principal, row)
    if secret:
        headers = {**headers, "Authorization": f"Bearer {secret}"}
    cookies = {settings.SESSION_COOKIE_NAME: session} if session else None
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
    response = httpx.post(f"{w.server}{path}", json=body, headers=headers, cookies=cookies,
                          timeout=30)  # fmt: skip
    status = response.status_code
    return ("ok" if 200 <= status < 300 else str(status)), response.text[:300]


# --- admin actions ------------------------------------------------------------------------------
def _token_state(pk: int):
    return AccessToken.objects.get(pk=pk).revoked_at


def _mapping_state(pk: int):
    return Mapping.objects.get(pk=pk).status


def _ledger_state(pk: int):
    return LedgerTransaction.objects.filter(billing_account_id=pk).count()


def _usage_state(pk: int):
    return UsageRecord.objects.get(pk=pk).state


MONEY = {"apply": "yes", "amount": "1.25", "reason": "authz matrix"}
ACTION_CASES: dict[str, tuple[Callable[[int], object], dict]] = {
    "revoke": (_token_state, {}),
    "set_live": (_mapping_state, {}),
    "set_staging": (_mapping_state, {}),
    "grant_credits": (_ledger_state, MONEY),
    "top_up": (_ledger_state, MONEY),
    "adjust": (_ledger_state, {**MONEY, "pool": "prepaid"}),
    "approve_held": (_usage_state, {"apply": "yes", "reason": "authz matrix"}),
    "reject_held": (_usage_state, {"apply": "yes", "reason": "authz matrix"}),
}


def action_cell(w: World, row: Row, principal: str) -> tuple[str, str]:
    state_of, fields = ACTION_CASES[row.variant]
    pk = w.action_targets[row.variant]
    before = state_of(pk)
    client, headers = django_client(w, principal, row)
    data = {"action": row.variant, helpers.ACTION_CHECKBOX_NAME: [pk], "index": 0, **fields}
    if "amount" in fields:
        data["submission"] = str(uuid.uuid4())
    response = client.post(row.path, data, secure=True, **headers)
    after = state_of(pk)
    detail = f"{response.status_code}: {before!r} -> {after!r}"
    assert response.status_code < 500, detail
    if after != before:
        return "ok", detail
    return ("login" if classify(client, response, headers) == "login" else "refused"), detail


CELL_RUNNERS = {"django": django_cell, "router": router_cell, "action": action_cell}


# --- tests --------------------------------------------------------------------------------------
def test_the_table_is_well_formed():
    keys = [row.key for row in ROWS]
    assert len(keys) == len(set(keys)), "duplicate rows"
    for row in ROWS:
        assert row.surface in SURFACES, row
        assert not row.permission or row.permission in FINE_GRAINED_PERMISSIONS, row
        for principal, value in row.expected.items():
            known = value in WORD_CELLS or (value.isdigit() and 400 <= int(value) < 500)
            assert known, f"{row.name}, {principal}: unknown cell value {value!r}"


@pytest.mark.django_db
def test_the_table_names_every_endpoint():
    """A URL pattern (each method it serves), a router route or a custom admin action without
    a row fails here; so does a row naming something that no longer exists."""
    exists = {("django", m, path) for path, p in url_patterns() for m in served_methods(path, p)}
    exists |= {("router", m, path) for m, path in ROUTER_ROUTES}
    exists |= {("action", "POST", f"{path}|{name}") for path, name in admin_actions()}
    named = {
        (r.surface, r.method, f"{r.path}|{r.variant}" if r.surface == "action" else r.path)
        for r in ROWS
    }
    assert proxy.is_router_path(proxy.CHAT_PATH)
    assert proxy.is_router_path("/some-provider/v1/chat/completions")
    missing, stale = sorted(exists - named), sorted(named - exists)
    assert not missing and not stale, f"without a row: {missing}; rows for nothing: {stale}"


@pytest.mark.parametrize(
    ("row", "principal"),
    [(row, p) for row in ROWS for p in PRINCIPALS if row.expected[p] != "-"],
    ids=[f"{row.name} :: {p}" for row in ROWS for p in PRINCIPALS if row.expected[p] != "-"],
)
def test_cell(world, db, row: Row, principal: str):
    got, detail = CELL_RUNNERS[row.surface](world, row, principal)
    expected = row.expected[principal]
    assert got == expected, f"{row.name} as {principal}: expected {expected}, got {got} ({detail})"

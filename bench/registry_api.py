"""Registry API benchmark: the Hub mapping lookup and the partner list, over HTTP on the ASGI
server, each beside the bare SQL that produces the same data, measured in the same run.

    make bench                       # or: make bench BENCH=bench/registry_api.py

Data: 50,000 hub models, 20,000 mappings over 10 providers (one provider with exactly 2,000;
tag-filter mappings and LoRA models included). The web server is uvicorn serving
config.asgi:application with DEBUG off (BENCH_WEB_WORKERS processes, default 1). The load
generator is a lean asyncio HTTP/1.1 keep-alive client in this process, so its own cost per
request is small next to the server's. This machine has 2 cores shared by server, database and
load generator: absolute numbers are for this box; the ratios are what compares across runs.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django

django.setup()

from django.db import connection

from accounts.models import Organization, OrgPlan
from registry.models import HubModel, Mapping, MappingStatus, MappingType, Provider
from testsupport.net import free_port

MODELS = 50_000
PROVIDERS = 10
MAPPINGS_PER_PROVIDER = 2_000
TAG_FILTERS = 10
LORA_MODELS = 500
LORA_TAGS = ["base_model:adapter:black-forest-labs/FLUX.1-dev", "lora"]
CONCURRENCY = 32
LOOKUP_REQUESTS = int(os.environ.get("BENCH_LOOKUPS", "6000"))
PARTNER_REQUESTS = int(os.environ.get("BENCH_PARTNER_GETS", "100"))
SQL_SAMPLES = 2000
# One process: with uvicorn's --workers N (N > 1) every small response waited ~40 ms here
# (Nagle + delayed ACK: the sockets uvicorn hands to worker processes lose TCP_NODELAY), so
# multi-worker numbers measure that artifact, not the application.
WEB_WORKERS = int(os.environ.get("BENCH_WEB_WORKERS", "1"))
SERVER = os.environ.get("BENCH_SERVER", "uvicorn")  # or granian
GOAL_LOOKUP_P50_MS = 5.0
GOAL_PARTNER_P50_MS = 60.0


# --- data -----------------------------------------------------------------------------------
def seed() -> tuple[list[str], str]:
    """Creates the data set; returns model ids that have mappings and the 2,000-mapping slug."""
    if HubModel.objects.exists():
        raise SystemExit("the bench database is not empty")
    started = time.perf_counter()
    tasks = ["text-generation", "image-text-to-text", "text-to-image", "feature-extraction"]
    models = []
    for i in range(MODELS):
        lora = i >= MODELS - LORA_MODELS
        pipeline = "text-to-image" if lora else tasks[i % len(tasks)]
        tags = ["diffusers", *LORA_TAGS] if lora else ["transformers", "conversational"]
        models.append(
            HubModel(
                model_id=f"org-{i % 3000}/model-{i:05d}",
                author=f"org-{i % 3000}",
                pipeline_tag=pipeline,
                tags=tags,
                adapter_weights_path="lora.safetensors" if lora else "",
            )
        )
    HubModel.objects.bulk_create(models, batch_size=5000)
    pks = list(HubModel.objects.order_by("pk").values_list("pk", "pipeline_tag"))
    providers = []
    for p in range(PROVIDERS):
        org = Organization.objects.create(name=f"bench-provider-{p}-org", plan=OrgPlan.TEAM)
        providers.append(
            Provider.objects.create(
                slug=f"provider-{p}", organization=org, base_url=f"http://127.0.0.1:9/p{p}"
            )
        )
    mappings = []
    mapped = set()
    rng = random.Random(42)
    for p, provider in enumerate(providers):
        singles = MAPPINGS_PER_PROVIDER - (TAG_FILTERS if p == PROVIDERS - 1 else 0)
        # Overlapping windows: popular models are served by several providers.
        start = p * 1_500
        for j in range(singles):
            pk, pipeline = pks[(start + j) % (MODELS - LORA_MODELS)]
            task = (
                "conversational"
                if pipeline in ("text-generation", "image-text-to-text")
                else (pipeline)
            )
            mapped.add(pk)
            mappings.append(
                Mapping(
                    provider=provider,
                    hub_model_id=pk,
                    task=task,
                    type=MappingType.SINGLE_MODEL,
                    provider_model=f"p{p}/m{pk}",
                    status=MappingStatus.LIVE if rng.random() < 0.9 else MappingStatus.STAGING,
                    health=rng.choice(["ok", "ok", "ok", "unknown", "error"]),
                )
            )
    for t in range(TAG_FILTERS):
        mappings.append(
            Mapping(
                provider=providers[PROVIDERS - 1 - t % 3],
                task="text-to-image",
                type=MappingType.TAG_FILTER,
                tags=sorted([*LORA_TAGS, f"style-{t}"]) if t else sorted(LORA_TAGS),
                adapter_type="lora",
                provider_model=f"lora-endpoint-{t}",
                status=MappingStatus.LIVE,
            )
        )
    Mapping.objects.bulk_create(mappings, batch_size=5000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    ids = dict(HubModel.objects.filter(pk__in=mapped).values_list("pk", "model_id"))
    lora_ids = list(
        HubModel.objects.filter(tags__contains=["lora"]).values_list("model_id", flat=True)[:200]
    )
    print(
        f"seeded {HubModel.objects.count():,} hub models, {Mapping.objects.count():,} mappings "
        f"over {Provider.objects.count()} providers in {time.perf_counter() - started:.1f} s"
    )
    return sorted(ids.values()) + lora_ids, providers[0].slug


# --- bare SQL baselines ---------------------------------------------------------------------------
LOOKUP_SQL = """
SELECT hm.hub_id, hm.model_id, p.slug, m.task, m.type, m.provider_model, m.status, m.health
FROM registry_hubmodel hm
LEFT JOIN LATERAL (
    SELECT * FROM registry_mapping m
    WHERE m.type = 'single-model' AND m.hub_model_id = hm.id AND m.status = 'live'
    UNION ALL
    SELECT * FROM registry_mapping m
    WHERE m.type = 'tag-filter' AND m.tags <@ hm.tags AND m.status = 'live'
) m ON true
LEFT JOIN registry_provider p ON p.id = m.provider_id AND p.state = 'active'
WHERE hm.model_id = %s
"""

PARTNER_SQL = """
SELECT m.public_id, m.task, m.type, hm.model_id, m.tags, m.adapter_type, m.provider_model,
       m.status
FROM registry_mapping m LEFT JOIN registry_hubmodel hm ON hm.id = m.hub_model_id
WHERE m.provider_id = (SELECT id FROM registry_provider WHERE slug = %s)
ORDER BY m.task, m.created_at, m.id
"""


def time_sql(sql: str, params_list: list) -> list[float]:
    samples = []
    with connection.cursor() as cursor:
        for params in params_list:
            started = time.perf_counter()
            cursor.execute(sql, params)
            cursor.fetchall()
            samples.append((time.perf_counter() - started) * 1000)
    return samples


# --- HTTP load ------------------------------------------------------------------------------------
async def _client(host: str, port: int, paths: list[str], out: list[float], errors: list[str]):
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for path in paths:
            request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n\r\n"
            started = time.perf_counter()
            writer.write(request.encode())
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            await reader.readexactly(length)
            out.append((time.perf_counter() - started) * 1000)
            if b" 200 " not in status_line:
                errors.append(f"{path}: {status_line!r}")
    finally:
        writer.close()


def http_load(port: int, paths: list[str], concurrency: int) -> tuple[list[float], float, list]:
    chunks = [paths[i::concurrency] for i in range(concurrency)]
    samples: list[float] = []
    errors: list[str] = []

    async def run():
        await asyncio.gather(*(_client("127.0.0.1", port, c, samples, errors) for c in chunks))

    started = time.perf_counter()
    asyncio.run(run())
    return samples, time.perf_counter() - started, errors


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def line(label: str, samples: list[float]) -> str:
    return (f"  {label:<44} p50 {statistics.median(samples):8.2f} ms   "
            f"p99 {pct(samples, 0.99):8.2f} ms")  # fmt: skip


def server_command(port: int) -> list[str]:
    if SERVER == "granian":
        return [
            str(BASE_DIR / ".venv/bin/granian"), "--interface", "asgi", "--host", "127.0.0.1",
            "--port", str(port), "--workers", str(WEB_WORKERS), "--log-level", "warning",
            "config.asgi:application",
        ]  # fmt: skip
    return [  # the served configuration (config/serve.py), as `make run`
        sys.executable, "-m", "config.serve", "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(WEB_WORKERS), "--log-level", "warning",
    ]  # fmt: skip


def start_server(port: int) -> subprocess.Popen:
    env = {**os.environ, "DEBUG": "false", "LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen(server_command(port), cwd=BASE_DIR, env=env, start_new_session=True)
    for _ in range(200):
        try:
            _samples, _, errors = http_load(port, ["/api/health"], 1)
            if not errors:
                return proc
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the web server did not start")


def main() -> int:
    model_ids, big_provider = seed()
    rng = random.Random(7)
    lookups = [rng.choice(model_ids) for _ in range(LOOKUP_REQUESTS)]
    lookup_paths = [f"/api/models/{m}?expand[]=inferenceProviderMapping" for m in lookups]
    partner_path = f"/api/partners/{big_provider}/models"

    sql_lookup = time_sql(LOOKUP_SQL, [(m,) for m in lookups[:SQL_SAMPLES]])
    sql_partner = time_sql(PARTNER_SQL, [(big_provider,)] * PARTNER_REQUESTS)
    partner_rows = Mapping.objects.filter(provider__slug=big_provider).count()

    port = free_port()
    server = start_server(port)
    try:
        http_load(port, lookup_paths[:300], 8)  # warm-up: connections, caches
        one, _, errors1 = http_load(port, lookup_paths[:1000], 1)
        many, elapsed, errors32 = http_load(port, lookup_paths, CONCURRENCY)
        partner, _, errors_p = http_load(port, [partner_path] * PARTNER_REQUESTS, 1)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    errors = errors1 + errors32 + errors_p
    if errors:
        print(f"{len(errors)} non-200 answers, e.g. {errors[:3]}")
        return 1

    sql50, http1_50, http32_50 = (statistics.median(s) for s in (sql_lookup, one, many))
    psql50, phttp50 = statistics.median(sql_partner), statistics.median(partner)
    print(f"\nweb: {SERVER}, {WEB_WORKERS} worker process(es), DEBUG off; {os.cpu_count()} cores")
    print("Mapping lookup  GET /api/models/<id>?expand[]=inferenceProviderMapping")
    print(line(f"bare SQL, 1 connection ({SQL_SAMPLES} samples)", sql_lookup))
    print(line("HTTP, 1 client (1,000 requests)", one) + f"   {http1_50 / sql50:5.1f}x SQL")
    print(line(f"HTTP, {CONCURRENCY} clients ({len(many):,} requests)", many)
          + f"   {http32_50 / sql50:5.1f}x SQL   {len(many) / elapsed:,.0f} req/s")  # fmt: skip
    print(f"Partner list  GET {partner_path}  ({partner_rows:,} mappings)")
    print(line(f"bare SQL ({PARTNER_REQUESTS} samples)", sql_partner))
    print(line(f"HTTP, 1 client ({PARTNER_REQUESTS} requests)", partner)
          + f"   {phttp50 / psql50:5.1f}x SQL")  # fmt: skip
    lookup_ok = "met" if http32_50 <= GOAL_LOOKUP_P50_MS else "NOT met"
    partner_ok = "met" if phttp50 <= GOAL_PARTNER_P50_MS else "NOT met"
    print(f"Goals (issue): lookup p50 <= 5 ms at 32 clients [{lookup_ok}], "
          f"partner list p50 <= 60 ms [{partner_ok}]")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

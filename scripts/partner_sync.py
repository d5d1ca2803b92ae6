"""Sync a provider's mappings with the Model Mapping API, as a partner's cron job would.

Written in the style of a real partner's sync script (Replicate's huggingface-model-mappings):
Bearer token auth, POST every wanted mapping and treat 409 as "already exists", read the
mapping `_id`s back from the public GET list, then set them live; `--delete` removes them.

    HF_TOKEN=hf_... python scripts/partner_sync.py --endpoint http://127.0.0.1:8000 \
        --provider together mappings.json [--delete]

`mappings.json` is a JSON array of items as the API takes them:
    {"task": "conversational", "hfModel": "org/model", "providerModel": "my-id"}
    {"type": "tag-filter", "task": "text-to-image", "tags": [...], "providerModel": "x",
     "adapterType": "lora"}
Exits non-zero, naming the item, on any answer other than success or 409. A 429 (the partner
write API's per-token rate limit) is waited out as its `Retry-After` says, then retried.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import httpx

RETRIES_MAX = 5
RETRY_AFTER_MAX_S = 120.0


class RateLimitRetry(httpx.BaseTransport):
    """Waits out a 429 as its `Retry-After` says (at most RETRY_AFTER_MAX_S), then retries."""

    def __init__(self, transport: httpx.BaseTransport | None = None) -> None:
        self.transport = transport or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for _ in range(RETRIES_MAX):
            response = self.transport.handle_request(request)
            if response.status_code != 429:
                return response
            try:
                wait_s = float(response.headers.get("Retry-After", "1"))
            except ValueError:
                wait_s = 1.0
            response.close()
            time.sleep(min(max(wait_s, 0.0), RETRY_AFTER_MAX_S))
        return self.transport.handle_request(request)

    def close(self) -> None:
        self.transport.close()


def key_of(item: dict) -> str:
    """The key of an item in the GET list: the hub model id, or tag-filter=<sorted tags>."""
    if item.get("type") == "tag-filter":
        return "tag-filter=" + ",".join(sorted(item["tags"]))
    return item["hfModel"]


def mapping_ids(client: httpx.Client, provider: str) -> dict[tuple[str, str], str]:
    """{(task, key): _id} from the public list (read without auth, as other readers do)."""
    base = str(client.base_url).rstrip("/")
    response = httpx.get(f"{base}/api/partners/{provider}/models", timeout=30)
    response.raise_for_status()
    return {
        (task, key): entry["_id"]
        for task, entries in response.json().items()
        for key, entry in entries.items()
        if entry.get("_id")
    }


def sync(client: httpx.Client, provider: str, items: list[dict]) -> dict[str, int]:
    counts = {"created": 0, "existing": 0, "live": 0}
    for item in items:
        response = client.post(
            f"/api/partners/{provider}/models",
            json={**item, "status": item.get("status") or "staging"},
        )
        if response.status_code == 409:
            counts["existing"] += 1
        elif response.is_success:
            counts["created"] += 1
        else:
            raise SystemExit(f"create {key_of(item)}: {response.status_code} {response.text}")
    ids = mapping_ids(client, provider)
    for item in items:
        mapping_id = ids[(item["task"], key_of(item))]
        response = client.put(
            f"/api/partners/{provider}/models/{mapping_id}/status", json={"status": "live"}
        )
        if not response.is_success:
            if "does not support task" in response.text:
                continue  # what the real script does: skip, report nothing
            raise SystemExit(f"set live {key_of(item)}: {response.status_code} {response.text}")
        counts["live"] += 1
    return counts


def delete(client: httpx.Client, provider: str, items: list[dict]) -> dict[str, int]:
    ids = mapping_ids(client, provider)
    deleted = 0
    for item in items:
        mapping_id = ids.get((item["task"], key_of(item)))
        if mapping_id is None:
            continue
        response = client.delete(f"/api/partners/{provider}/models/{mapping_id}")
        if not response.is_success:
            raise SystemExit(f"delete {key_of(item)}: {response.status_code} {response.text}")
        deleted += 1
    return {"deleted": deleted}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--endpoint", default=os.environ.get("HF_ENDPOINT", "http://127.0.0.1:8000")
    )
    parser.add_argument("--provider", required=True)
    parser.add_argument("--delete", action="store_true", help="delete the listed mappings")
    parser.add_argument("file", type=Path)
    args = parser.parse_args()
    token = os.environ.get("HF_TOKEN")
    if not token:
        parser.error("set HF_TOKEN to a write token of a member of the provider's organization")
    items = json.loads(args.file.read_text())
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    with httpx.Client(
        base_url=args.endpoint, headers=headers, timeout=30, transport=RateLimitRetry()
    ) as client:
        result = (
            delete(client, args.provider, items)
            if args.delete
            else sync(client, args.provider, items)
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

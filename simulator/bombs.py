"""Compression bombs: the chat answers of the `bomb_mb` switch.

A hostile or broken provider can answer a small compressed body that inflates to something
huge (a 300 KiB gzip of a 300 MiB answer). The answer here is well formed once decoded: a
chat completion whose `content` is `bomb_mb` MiB of `0`s (JSON), or SSE chunks each carrying
64 KiB of `0`s then `data: [DONE]` (a stream). Zeros compress about 1000:1, like the real
attack.

Nothing is held whole: the decoded answer is produced 1 MiB at a time and compressed as it is
sent, so a 4 GiB bomb costs the simulator a few MiB of memory (and about 2.5 ms of CPU per MiB
the client actually reads: a client that stops reading stops the work).
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import AsyncIterator, Iterator

MIB = 1024 * 1024
WRITE_BYTES = 64 * 1024  # the largest body message sent at once
_STREAM_EVENT_CONTENT = 64 * 1024

CONTENT_ENCODINGS = {"gzip": "gzip", "deflate": "deflate", "identity": "", "unsupported": "br"}
"""`bomb_encoding` -> the Content-Encoding header sent ("" none). `unsupported` labels the
gzip bytes `br`, an encoding the client is not expected to decode."""


def _whole_parts(size: int, model: str) -> Iterator[bytes]:
    head = (
        json.dumps(
            {"id": "chatcmpl-bomb", "object": "chat.completion", "created": 0, "model": model}
        )[:-1].encode()
        + b',"choices":[{"index":0,"message":{"role":"assistant","content":"'
    )
    tail = (
        b'"},"logprobs":null,"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}'
    )
    yield head
    zeros = max(0, size - len(head) - len(tail))
    block = b"0" * MIB
    full, rest = divmod(zeros, MIB)
    for _ in range(full):
        yield block
    yield block[:rest]
    yield tail


def _stream_parts(size: int, model: str) -> Iterator[bytes]:
    chunk = {
        "id": "chatcmpl-bomb",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": {"content": "0" * _STREAM_EVENT_CONTENT}}],
    }
    event = b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
    per_block = max(1, MIB // len(event))
    block = event * per_block
    done = b"data: [DONE]\n\n"
    sent = 0
    while sent + len(block) + len(done) <= size:
        yield block
        sent += len(block)
    while sent + len(event) + len(done) <= size:
        yield event
        sent += len(event)
    yield done


def decoded_parts(*, stream: bool, size_bytes: int, model: str) -> Iterator[bytes]:
    """The decoded answer, in parts of at most 1 MiB (about `size_bytes` in all)."""
    return (_stream_parts if stream else _whole_parts)(size_bytes, model)


async def encoded_parts(
    *, stream: bool, size_mb: int, encoding: str, model: str
) -> AsyncIterator[bytes]:
    """The answer as sent: compressed lazily (gzip, or zlib-wrapped deflate) or not at all
    (`identity`), in writes of at most 64 KiB."""
    compressor = None
    if encoding != "identity":
        wbits = zlib.MAX_WBITS if encoding == "deflate" else 16 + zlib.MAX_WBITS
        compressor = zlib.compressobj(6, zlib.DEFLATED, wbits)
    for part in decoded_parts(stream=stream, size_bytes=size_mb * MIB, model=model):
        out = part if compressor is None else compressor.compress(part)
        for start in range(0, len(out), WRITE_BYTES):
            yield out[start : start + WRITE_BYTES]
        await asyncio.sleep(0)  # other requests are served meanwhile
    if compressor is not None:
        yield compressor.flush()

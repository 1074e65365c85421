"""The loops batchroute is measured against, each run alone in its own process.

Run: .venv/bin/python bench/baselines.py KIND --base-url URL --data TASKS.parquet
     [--concurrency 64]

KIND is one of
  raw-http     aiohttp posting the same JSON batchroute sends (the transport's ceiling)
  sdk          `AsyncOpenAI.chat.completions.create` under a semaphore, default transport
               (the ceiling of any tool built on the SDK)
  sdk-aiohttp  the same with `http_client=openai.DefaultAioHttpClient()`
  litellm      LiteLLM's `Router.acompletion` in the same loop (the `bench` extra)

Every request is one row of TASKS.parquet rendered with batchroute's prompt template; each
loop keeps `concurrency` requests in flight. Prints one JSON line: requests, elapsed seconds
and the CPU seconds of the loop (imports and start-up left out; the batchroute figures
include them), and the number of answers that were not a 200.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from common import MAX_TOKENS, MODEL, prompts

Send = Callable[[str], Awaitable[bool]]  # one request for a prompt; True when answered (200)


async def run_loop(send: Send, texts: list[str], *, concurrency: int) -> tuple[float, float, int]:
    """`concurrency` workers draining the prompts; elapsed, CPU seconds and failures."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for text in texts:
        queue.put_nowait(text)
    failed = 0

    async def worker() -> None:
        nonlocal failed
        while not queue.empty():
            if not await send(queue.get_nowait()):
                failed += 1

    cpu, started = time.process_time(), time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    return time.perf_counter() - started, time.process_time() - cpu, failed


def _body(text: str) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 16}


async def raw_http(base_url: str, texts: list[str], concurrency: int) -> tuple[float, float, int]:
    import aiohttp

    url = base_url + "/chat/completions"
    headers = {"Content-Type": "application/json", "Authorization": "Bearer not-needed"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def send(text: str) -> bool:
            data = json.dumps(_body(text)).encode()
            async with session.post(url, data=data) as response:
                json.loads(await response.read())
                return response.status == 200

        return await run_loop(send, texts, concurrency=concurrency)


async def sdk(
    base_url: str, texts: list[str], concurrency: int, *, aiohttp_client: bool = False
) -> tuple[float, float, int]:
    import openai

    http_client = openai.DefaultAioHttpClient() if aiohttp_client else None
    client = openai.AsyncOpenAI(
        base_url=base_url, api_key="not-needed", max_retries=0, http_client=http_client
    )
    gate = asyncio.Semaphore(concurrency)

    async def send(text: str) -> bool:
        async with gate:
            completion = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": text}],
                max_tokens=MAX_TOKENS,
            )
        return bool(completion.choices)

    async with client:
        return await run_loop(send, texts, concurrency=concurrency)


async def litellm_router(
    base_url: str, texts: list[str], concurrency: int
) -> tuple[float, float, int]:
    # No cost map from the internet (this machine has none) and no telemetry.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm
    from litellm import Router

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    router = Router(
        model_list=[
            {
                "model_name": MODEL,
                # "openai/" selects LiteLLM's OpenAI-compatible provider; the rest is the name.
                "litellm_params": {
                    "model": f"openai/{MODEL}",
                    "api_base": base_url,
                    "api_key": "not-needed",
                },
            }
        ],
        num_retries=0,
    )
    gate = asyncio.Semaphore(concurrency)

    async def send(text: str) -> bool:
        async with gate:
            response = await router.acompletion(
                model=MODEL, messages=[{"role": "user", "content": text}], max_tokens=MAX_TOKENS
            )
        return bool(response.choices)

    return await run_loop(send, texts, concurrency=concurrency)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["raw-http", "sdk", "sdk-aiohttp", "litellm"])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    texts = prompts(args.data)
    c, url = args.concurrency, args.base_url
    if args.kind == "raw-http":
        loop = raw_http(url, texts, c)
    elif args.kind == "sdk":
        loop = sdk(url, texts, c)
    elif args.kind == "sdk-aiohttp":
        loop = sdk(url, texts, c, aiohttp_client=True)
    else:
        loop = litellm_router(url, texts, c)
    elapsed, cpu, failed = asyncio.run(loop)
    print(
        json.dumps({"requests": len(texts), "elapsed_s": elapsed, "cpu_s": cpu, "failed": failed})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

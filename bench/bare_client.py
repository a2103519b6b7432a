"""The baseline of `bench/upstream.py`: a bare aiohttp client making the worker's calls.

`--calls` requests `POST /v1/images/generations`, the body the openai engine sends, to the
same local upstream at the same concurrency, each answer read and its image decoded from
base64 (what any client of that API must do to hold the image). It runs in its own
process and prints one JSON object: its CPU per call (getrusage, so the figure carries across
machines as a multiple) and its throughput against the ideal `concurrency / latency`.

    python bench/bare_client.py --port 8010 --calls 1000 --concurrency 500 --latency 2
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import resource
import time

import aiohttp
import orjson

BODY = {
    "prompt": "a lighthouse on a cliff at dusk",
    "model": "gpt-image-2",
    "size": "1024x1024",
    "n": 1,
    "output_format": "png",
    "quality": "low",
}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(port: int, calls: int, concurrency: int) -> dict[str, float | int]:
    url = f"http://127.0.0.1:{port}/v1/images/generations"
    headers = {"Authorization": "Bearer sk-bench-not-a-real-key"}
    payload = orjson.dumps(BODY)
    remaining = iter(range(calls))
    finishes: list[float] = []
    image_bytes = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def caller() -> None:
            nonlocal image_bytes
            for _ in remaining:
                async with session.post(
                    url, data=payload, headers={**headers, "Content-Type": "application/json"}
                ) as response:
                    response.raise_for_status()
                    answer = orjson.loads(await response.read())
                image_bytes += len(base64.b64decode(answer["data"][0]["b64_json"]))
                finishes.append(time.monotonic())

        cpu_before = _cpu_seconds()
        started = time.monotonic()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        cpu = _cpu_seconds() - cpu_before
    window = max(finishes) - started
    return {
        "calls": len(finishes),
        "window_s": round(window, 3),
        "calls_per_s": round(len(finishes) / window, 1),
        "cpu_s": round(cpu, 3),
        "cpu_ms_per_call": round(cpu / max(1, len(finishes)) * 1000, 3),
        "image_bytes": image_bytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=500)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.port, args.calls, args.concurrency))))


if __name__ == "__main__":
    main()

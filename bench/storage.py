"""The storage benchmark: `python bench/storage.py [--help]`. One JSON report on stdout.

1. store_and_link: a 4K PNG (3840×2160; noise, so it does not compress: ~25 MB, the
   worst case) is stored `--puts` times on each backend, then linked. `local` is the
   data-dir backend (fsynced files, in a temporary directory); `s3` is the S3 backend
   against moto's standalone server on 127.0.0.1 (a Python server on the same cores, so
   its time is the client's and moto's CPU, not a network's; 8 MiB parts). `link_us` is
   the CPU of one `url_for`: `fresh` signs a new key each call, `repeat` asks for one key
   again (S3 presigned links are then reused for up to 60 s).
2. poll: GET /v1/result/{id} of a completed task, closed loop (bench/loadgen.py, its own
   process), against two `imageforge serve` processes side by side: local storage (HMAC
   /files links, the baseline) and S3 with presigned links; passes interleaved. The
   ratio says whether presigning slows the hot path.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from imageforge.storage import LocalStorage, Storage, UrlSigner
from imageforge.storage.s3 import S3Options, S3Storage
from imageforge.testing.processes import ServerProcess, create_key, wait_terminal
from imageforge.testing.s3 import MotoServer, static_credentials
from loadgen import LoadSpec, run_load

SIGNER = UrlSigner(os.urandom(32))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def four_k_png() -> bytes:
    image = Image.frombytes("RGB", (3840, 2160), os.urandom(3840 * 2160 * 3))
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1)
    return out.getvalue()


def _link_us(storage: Storage, keys: list[str]) -> float:
    expires = int(time.time()) + 86_400
    started = time.process_time()
    for key in keys:
        storage.url_for(key, base_url="http://127.0.0.1:8000", expires=expires)
    return (time.process_time() - started) / len(keys) * 1e6


async def store_and_link(name: str, storage: Storage, data: bytes, puts: int) -> dict[str, Any]:
    seconds = []
    for n in range(puts):
        started = time.perf_counter()
        await storage.put(f"2026/12/01/image_bench-{n}.png", data, "image/png")
        seconds.append(time.perf_counter() - started)
    fresh = [f"2026/12/01/image_link-{n}.png" for n in range(2_000)]
    result = {
        "put_ms": {
            "p50": round(statistics.median(seconds) * 1000, 1),
            "max": round(max(seconds) * 1000, 1),
        },
        "put_mb_per_s": round(len(data) / statistics.median(seconds) / 1e6, 1),
        "link_us": {
            "fresh": round(_link_us(storage, fresh), 2),
            "repeat": round(_link_us(storage, [fresh[0]] * 20_000), 2),
        },
    }
    log(f"{name}: {result}")
    return result


def poll(passes: int, duration: float, moto: MotoServer, work: Path) -> dict[str, Any]:
    bucket = moto.create_bucket()
    variants = {"local": {}, "s3_presigned": moto.env(bucket)}
    servers: dict[str, tuple[ServerProcess, str, str]] = {}
    try:
        for name, env in variants.items():
            data = work / name / "data"
            key = create_key(data, **env)["key"]
            server = ServerProcess(data, **env)
            with server.client(key) as client:
                created = client.post(
                    "/v1/image2/images", json={"model": "gpt-image-2", "prompt": "bench"}
                ).json()
                body = wait_terminal(client, created["id"])
                assert body["status"] == "completed", body
                assert httpx.get(body["image_url"]).status_code == 200
            servers[name] = (server, key, created["id"])
        runs: dict[str, list[float]] = {name: [] for name in variants}
        p99: dict[str, list[float]] = {name: [] for name in variants}
        for number in range(passes):
            for name, (server, key, task_id) in servers.items():
                result = run_load(
                    LoadSpec(
                        port=server.port,
                        paths=[f"/v1/result/{task_id}"],
                        headers={"Authorization": f"Bearer {key}"},
                        connections=64,
                        duration_s=duration,
                        warmup_s=1.0,
                        server_pid=server.process.pid,
                        keep_latencies=False,
                    )
                )
                assert result.errors == 0, result.error_samples
                runs[name].append(result.rps)
                p99[name].append(result.p99_ms)
                log(f"poll pass {number + 1} {name}: {result.rps:.0f} req/s p99 {result.p99_ms} ms")
    finally:
        for server, _, _ in servers.values():
            server.terminate()
    report: dict[str, Any] = {
        name: {"rps": round(statistics.median(values)), "p99_ms": statistics.median(p99[name])}
        for name, values in runs.items()
    }
    report["s3_over_local"] = round(
        statistics.median(runs["s3_presigned"]) / statistics.median(runs["local"]), 3
    )
    return report


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--puts", type=int, default=5, help="4K PNGs stored per backend")
    parser.add_argument("--passes", type=int, default=3, help="interleaved poll passes")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per poll pass")
    options = parser.parse_args()
    data = four_k_png()
    log(f"4K PNG: {len(data) / 1e6:.1f} MB")
    report: dict[str, Any] = {"png_bytes": len(data), "machine_cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp, MotoServer() as moto:
        local = LocalStorage(Path(tmp) / "images", SIGNER)
        s3 = S3Storage(
            S3Options(bucket=moto.create_bucket(), endpoint_url=moto.endpoint_url),
            SIGNER,
            credentials=static_credentials,  # type: ignore[arg-type]
        )
        report["store_and_link"] = {
            "local": await store_and_link("local", local, data, options.puts),
            "s3": await store_and_link("s3", s3, data, options.puts),
        }
        await local.aclose()
        await s3.aclose()
        report["poll"] = await asyncio.to_thread(
            poll, options.passes, options.duration, moto, Path(tmp) / "poll"
        )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())

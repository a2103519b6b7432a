"""The independent baseline of `bench/api.py`: a minimal FastAPI app in its own process.

What a new user would write to see what the framework itself costs: one route per hot
path, each returning a dict of the same shape as imageforge's answer, no middleware, no
database, no authentication. It imports nothing of imageforge and runs under uvicorn with
the settings `imageforge serve` uses (uvloop, httptools, no access log, no server header),
so that a ratio to it says what imageforge adds over the framework's own hello-world.

    python bench/bare_app.py --port 8001
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn
from fastapi import FastAPI

app = FastAPI()

#: The shape of `GET /v1/result/{id}` for a completed task (link included).
_RESULT = {
    "id": "image_fd35ee52-2a98-44a6-b930-29a88ce9b8fd",
    "object": "image.generation",
    "created": 1774836724,
    "model": "gpt-image-2",
    "status": "completed",
    "image_url": "http://127.0.0.1:8000/files/2026/12/01/"
    "image_fd35ee52-2a98-44a6-b930-29a88ce9b8fd-1.png?expires=1774923124"
    "&signature=k3Zq0lJ1wXh2n9cVd8yQ4mR7sT6uP5oE1aB0cD2eF3g",
    "error": None,
    "amount": 0.006,
    "refunded": False,
    "expired": False,
}

#: The shape of `POST /v1/image2/images`.
_CREATED = {
    "id": "image_fd35ee52-2a98-44a6-b930-29a88ce9b8fd",
    "object": "image",
    "created": 1774836724,
    "model": "gpt-image-2",
    "status": "queued",
    "error": None,
    "amount": 0.006,
    "refunded": False,
}


# `response_model=None`: the plain hello-world (a dict, serialised by FastAPI's encoder),
# the same as a route without a return annotation.
@app.get("/v1/result/{task_id}", response_model=None)
async def result(task_id: str) -> dict[str, Any]:
    return _RESULT


@app.post("/v1/image2/images", response_model=None)
async def create() -> dict[str, Any]:
    return _CREATED


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        server_header=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()

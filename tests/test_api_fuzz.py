"""Whatever a client sends, the answer is a 200 or a 4xx with the error body, never a 500."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import make_settings, start_harness

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
field_values = {
    "model": st.one_of(
        st.sampled_from(["gpt-image-2", "gpt-image-2-r", "GPT-IMAGE-2"]), json_values
    ),
    "prompt": st.one_of(st.text(max_size=60), json_values),
    "quality": st.one_of(st.sampled_from(["low", "MEDIUM", "high", ""]), json_values),
    "ratio": st.one_of(st.sampled_from(["1:1", "16:9", "21:9", "7:5"]), json_values),
    "resolution": st.one_of(st.sampled_from(["1k", "2K", "4k", "8k"]), json_values),
    "size": st.one_of(
        st.builds(lambda w, h: f"{w}x{h}", st.integers(-16, 5000), st.integers(-16, 5000)),
        json_values,
    ),
    "image_urls": st.one_of(
        st.lists(
            st.sampled_from(["https://example.com/a.png", "ftp://x", "", "http://"]), max_size=20
        ),
        json_values,
    ),
}
bodies = st.fixed_dictionaries({}, optional=field_values) | json_values


def test_random_bodies_never_cause_a_server_error(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    lifespan, api = loop.run_until_complete(
        start_harness(make_settings(tmp_path / "data"), run_worker=False)
    )
    key = loop.run_until_complete(api.new_key())
    seen: list[int] = []

    @settings(
        max_examples=300,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(body=bodies)
    @example(body={"model": "gpt-image-2", "prompt": "a valid request"})
    @example(body={"model": "gpt-image-2", "prompt": "x", "size": "1x1"})
    def check(body: Any) -> None:
        for path in ("/v1/image2/images", "/v1/image2/images/quote"):
            response = loop.run_until_complete(
                api.client.post(path, json=body, headers={"Authorization": f"Bearer {key}"})
            )
            seen.append(response.status_code)
            assert response.status_code in (200, 400, 413), (body, response.text)
            if response.status_code != 200:
                error = response.json()["error"]
                assert error["message"] and error["type"] == "invalid_request_error"

    try:
        check()
    finally:
        loop.run_until_complete(api.client.aclose())
        loop.run_until_complete(lifespan.__aexit__(None, None, None))
        loop.close()
    assert 200 in seen and 400 in seen

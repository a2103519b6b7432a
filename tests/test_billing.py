"""Price and refund arithmetic: integers all the way, exact at the JSON edge."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from imageforge.billing import (
    MAX_MICROS,
    InsufficientCredits,
    build_price_book,
    charge,
    format_amount,
    parse_amount,
    plan_balance_change,
    refund,
    to_json_number,
)
from imageforge.catalog import DEFAULT_MODELS, billing_tiers
from imageforge.errors import ConfigurationError

micros = st.integers(min_value=0, max_value=MAX_MICROS)


@given(micros)
def test_amounts_round_trip_through_text_and_json(amount: int) -> None:
    text = str(Decimal(amount) / 1_000_000)
    assert parse_amount(text) == amount
    number = orjson.loads(orjson.dumps(to_json_number(amount)))
    assert Decimal(str(number)) * 1_000_000 == amount


@pytest.mark.parametrize(
    ("text", "micros"),
    [("0.006", 6_000), ("0.053", 53_000), ("12.50", 12_500_000), ("0", 0), ("7", 7_000_000)],
)
def test_parse_amount(text: str, micros: int) -> None:
    assert parse_amount(text) == micros


@pytest.mark.parametrize("text", ["-1", "0.0000001", "abc", "", "NaN", "inf", "1e30"])
def test_parse_amount_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_amount(text)


def test_format_amount() -> None:
    assert format_amount(53_000, "USD") == "0.053 USD"
    assert format_amount(12_500_000, "USD") == "12.50 USD"
    assert format_amount(0, "EUR") == "0.00 EUR"
    assert format_amount(-6_000, "USD") == "-0.006 USD"


def test_default_price_book_matches_the_shipped_prices() -> None:
    book = build_price_book("USD", {})
    assert book.price("gpt-image-2", "low") == 6_000
    assert book.price("gpt-image-2", "medium") == 53_000
    assert book.price("gpt-image-2", "high") == 211_000
    assert book.price("gpt-image-2-r", "1k") == 5_000
    assert book.price("unpriced-model", "low") == 0
    for spec in DEFAULT_MODELS.values():
        book.check_covers(spec.name, billing_tiers(spec))


def test_configured_prices_replace_defaults_and_empty_tables_are_free() -> None:
    book = build_price_book("EUR", {"gpt-image-2": {"low": "0.01"}, "gpt-image-2-r": {}})
    assert book.price("gpt-image-2", "low") == 10_000
    assert book.price("gpt-image-2-r", "1k") == 0
    with pytest.raises(ConfigurationError, match="medium"):
        book.check_covers("gpt-image-2", ("low", "medium", "high"))


@given(
    start=st.integers(min_value=0, max_value=10**9),
    events=st.lists(
        st.tuples(st.integers(min_value=0, max_value=10**7), st.booleans()), max_size=60
    ),
)
def test_charges_and_refunds_never_go_below_zero_and_balance(
    start: int, events: list[tuple[int, bool]]
) -> None:
    balance: int | None = start
    charged_total = refunded_total = 0
    for price, fails in events:
        try:
            balance = charge(balance, price)
        except InsufficientCredits as exc:
            assert exc.price == price and exc.balance == balance and price > (balance or 0)
            continue
        assert balance is not None and balance >= 0
        charged_total += price
        if fails:
            balance = refund(balance, price)
            refunded_total += price
    assert balance == start - charged_total + refunded_total


@given(st.lists(st.integers(min_value=0, max_value=10**7), max_size=30))
def test_unlimited_keys_are_never_refused(prices: list[int]) -> None:
    balance = None
    for price in prices:
        balance = charge(balance, price)
        assert balance is None


@given(
    balance=st.integers(min_value=0, max_value=10**9),
    ledger_sum=st.integers(min_value=-(10**9), max_value=10**9),
    target=st.integers(min_value=0, max_value=10**9),
)
def test_setting_credits_books_the_difference_to_the_ledger(
    balance: int, ledger_sum: int, target: int
) -> None:
    delta, new = plan_balance_change(balance, ledger_sum, None, target)
    assert new == target and ledger_sum + delta == target


def test_adding_to_an_unlimited_key_is_refused() -> None:
    from imageforge.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="unlimited"):
        plan_balance_change(None, -5, 10, None)
    with pytest.raises(InvalidRequest, match="below zero"):
        plan_balance_change(5, 5, -6, None)


def test_a_model_without_prices_inherits_from_the_one_named() -> None:
    book = build_price_book(
        "USD",
        {"gpt-image-2": {"low": "0.01"}, "house": None, "free": {}},
        {"house": "gpt-image-2", "free": "gpt-image-2"},
    )
    # The operator's gpt-image-2 prices are what is inherited; an empty table stays free.
    assert book.price("house", "low") == 10_000
    assert book.price("free", "low") == 0

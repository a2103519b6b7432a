"""Money: prices, credits and refunds as integer micro-units of one currency.

Never floats: an amount is an `int` count of micro-units (1 USD = 1,000,000). The
only conversion to a JSON number happens at the edge (`to_json_number`), and it is
exact because every micro-unit amount below 2**53 has a shortest float repr equal to
its decimal text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from types import MappingProxyType

from imageforge.errors import ConfigurationError, ImageforgeError, InvalidRequest

MICROS_PER_UNIT = 1_000_000
#: Largest amount accepted anywhere: far above any real balance, far below 2**53.
MAX_MICROS = 10**15

#: OpenAI's list prices for one 1024×1024 image (gpt-image-2 by quality tier),
#: and the seed's 1K price for gpt-image-2-r (by resolution).
DEFAULT_PRICES: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {
        "gpt-image-2": MappingProxyType({"low": "0.006", "medium": "0.053", "high": "0.211"}),
        "gpt-image-2-r": MappingProxyType({"1k": "0.005"}),
    }
)


class InsufficientCredits(ImageforgeError):
    """402: the key's balance does not cover the price. Nothing was created or charged."""

    status_code = 402
    error_type = "insufficient_credits"
    code = "insufficient_credits"

    def __init__(self, *, price: int, balance: int, currency: str | None = None) -> None:
        self.price = price
        self.balance = balance
        if currency is None:
            cost, left = f"{price} micro-units", f"{balance} micro-units"
        else:
            cost, left = format_amount(price, currency), format_amount(balance, currency)
        super().__init__(f"insufficient credits: this image costs {cost} and the balance is {left}")


def parse_amount(value: str | int | Decimal, *, what: str = "amount") -> int:
    """Currency units (`"12.50"`) → micro-units. At most 6 decimals, never negative."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: must be a number of currency units")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"{what}: must be a number like 12.50 (got {str(value)[:40]!r})") from None
    if not amount.is_finite():
        raise ValueError(f"{what}: must be a finite number")
    micros = amount * MICROS_PER_UNIT
    if micros != micros.to_integral_value():
        raise ValueError(f"{what}: at most 6 decimal places (got {value})")
    if micros < 0:
        raise ValueError(f"{what}: must not be negative (got {value})")
    if micros > MAX_MICROS:
        raise ValueError(f"{what}: must be at most {MAX_MICROS // MICROS_PER_UNIT:,}")
    return int(micros)


def to_json_number(micros: int) -> float | int:
    """The amount in currency units as a JSON number, exact to the micro-unit."""
    if micros % MICROS_PER_UNIT == 0:
        return micros // MICROS_PER_UNIT
    return micros / MICROS_PER_UNIT


def format_amount(micros: int, currency: str) -> str:
    """For people: `12.50 USD`, `0.053 USD`, `-0.006 USD`."""
    sign = "-" if micros < 0 else ""
    units, fraction = divmod(abs(micros), MICROS_PER_UNIT)
    digits = f"{fraction:06d}".rstrip("0").ljust(2, "0")
    return f"{sign}{units}.{digits} {currency}"


@dataclass(frozen=True)
class PriceBook:
    """Prices per public model and billing tier; a model without prices is free."""

    currency: str
    prices: Mapping[str, Mapping[str, int]]

    def price(self, model: str, tier: str) -> int:
        table = self.prices.get(model)
        if not table:
            return 0
        try:
            return table[tier]
        except KeyError:
            # Validated at start-up (`check_covers`); reaching this is a configuration bug.
            raise ConfigurationError(
                f"no price for tier {tier!r}", setting=f'models."{model}".prices'
            ) from None

    def check_covers(self, model: str, tiers: tuple[str, ...]) -> None:
        """A priced model must price every tier it can be asked for."""
        table = self.prices.get(model)
        if not table:
            return
        missing = [tier for tier in tiers if tier not in table]
        if missing:
            raise ConfigurationError(
                f"model {model!r} has prices but none for {', '.join(missing)}",
                setting=f'models."{model}".prices',
                fix="price every tier it can be asked for, or none (prices = {} is free)",
            )


def build_price_book(
    currency: str,
    configured: Mapping[str, Mapping[str, str | Decimal] | None],
    inherited: Mapping[str, str] | None = None,
) -> PriceBook:
    """Built-in prices, replaced per model by configured ones (an empty table: free).
    `inherited` maps a model without a table of its own to the model whose prices it
    takes (after configuration: an operator's gpt-image-2 prices are what a custom model
    inherits)."""
    merged: dict[str, Mapping[str, str | Decimal]] = dict(DEFAULT_PRICES)
    for model, table in configured.items():
        if table is not None:
            merged[model] = table
    for model, base in (inherited or {}).items():
        if model not in merged and base in merged:
            merged[model] = merged[base]
    prices = {
        model: {
            tier.lower(): _configured_price(model, tier, amount) for tier, amount in table.items()
        }
        for model, table in merged.items()
    }
    return PriceBook(currency=currency, prices=prices)


def _configured_price(model: str, tier: str, amount: str | Decimal) -> int:
    setting = f'models."{model}".prices.{tier}'
    try:
        return parse_amount(amount, what=setting)
    except ValueError as exc:
        raise ConfigurationError(
            str(exc).removeprefix(f"{setting}: "),
            setting=setting,
            fix='write the price in currency units as a string, e.g. "0.053"',
        ) from None


def charge(balance: int | None, price: int) -> int | None:
    """The balance after charging `price`; None is unlimited. Never below zero."""
    if balance is None:
        return None
    if price > balance:
        raise InsufficientCredits(price=price, balance=balance)
    return balance - price


def refund(balance: int | None, charged: int) -> int | None:
    """The balance after returning exactly what a task was charged."""
    return None if balance is None else balance + charged


def plan_balance_change(
    balance: int | None, ledger_sum: int, add_micros: int | None, set_micros: int | None
) -> tuple[int, int]:
    """(ledger entry amount, new balance) for an operator's `add` or `set` of credits.

    The ledger of a limited key always sums to its balance, so a `set` books exactly the
    difference to the ledger's sum (which, for a key that was unlimited, also absorbs its
    earlier unlimited spend)."""
    if (add_micros is None) == (set_micros is None):
        raise InvalidRequest("give exactly one of add or set", param="amount")
    if add_micros is not None:
        if balance is None:
            raise InvalidRequest(
                "this key has unlimited credits; use set to give it a balance", param="amount"
            )
        target = balance + add_micros
        if target < 0:
            raise InvalidRequest("the balance cannot go below zero", param="amount")
        return add_micros, target
    assert set_micros is not None
    if set_micros < 0:
        raise InvalidRequest("the balance cannot go below zero", param="amount")
    return set_micros - ledger_sum, set_micros

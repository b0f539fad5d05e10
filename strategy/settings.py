"""The strategy's settings: every key, default, valid range, unit and human label of the spec, and
the parser for values a user types (``/set delta 0.6``, ``entry_drop 1,5%``,
``--set tp_tiers=0:50,121:30``).

Percent settings are stored in percent (``entry_drop_pct = 1.5`` means 1.5 %), as the user types
them. A bad value is an error *value* (``SettingError``) whose message, in the product's words,
names the setting, its valid range and unit (never a validator's text).

Numbers are read by ``strategy.numbers.read_number``, the one reader of numbers typed in chat (its
docstring has the rules): ASCII digits, ``.`` or ``,`` as the decimal mark (``0,5`` is 0.5), a
thousands separator where it can only be one (``12,000`` is 12000, ``1,234.5``), and for
whole-number settings (days, lots, seconds…) and USD amounts ``1.000`` refused as ambiguous: many
people write a thousand that way, and no such setting has three decimals. Stored values are read
with the same reader (they are canonical: never a separator).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from itertools import pairwise
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from strategy.numbers import NotANumber, read_number

Tier = tuple[int, Decimal]
Kind = Literal["decimal", "int", "bool", "tiers", "choice", "size"]

SIZE_MAX_CONTRACTS = 100
SIZE_MIN_PCT, SIZE_MAX_PCT = Decimal("0.1"), Decimal(100)


@dataclass(frozen=True, slots=True)
class PositionSize:
    """How big a new lot is: a fixed number of contracts, or a share of net liquidation (percent)."""

    contracts: int | None = 1
    pct: Decimal | None = None

    def problem(self) -> str | None:
        """Why this size cannot be used, or None."""
        if (self.contracts is None) == (self.pct is None):
            return "a position size is either contracts or a percent of net liquidation"
        if self.contracts is not None and not 1 <= self.contracts <= SIZE_MAX_CONTRACTS:
            return f"contracts must be 1–{SIZE_MAX_CONTRACTS}"
        if self.pct is not None and not SIZE_MIN_PCT <= self.pct <= SIZE_MAX_PCT:
            return f"a share of net liquidation must be {_plain(SIZE_MIN_PCT)}–{_plain(SIZE_MAX_PCT)} %"
        return None

    @property
    def text(self) -> str:
        """As a user types it: ``2`` or ``10%``."""
        return str(self.contracts) if self.pct is None else f"{self.pct.normalize():f}%"


class PauseMode(StrEnum):
    """What a pause holds back: nothing, new positions (entries, rolls and recycling buys, while
    exits keep running), or every automatic order."""

    OFF = "off"
    ENTRIES = "entries"
    ALL = "all"

    def __bool__(self) -> bool:
        """Paused at all (``if settings.paused:``)."""
        return self is not PauseMode.OFF

    @property
    def holds_exits(self) -> bool:
        return self is PauseMode.ALL

DEFAULT_TIERS: tuple[Tier, ...] = ((0, Decimal(50)), (121, Decimal(30)), (181, Decimal(10)))
TIER_MAX_DAY = 1000
TIER_MAX_PCT = Decimal(1000)


class StrategySettings(BaseModel):
    """Every run-time setting of the strategy, with the spec's defaults. The validators are the
    last line of defence (stored values, the backtest); ``parse_setting`` checks the same rules
    first and words the refusal for the user."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    target_delta: Decimal = Field(Decimal("0.60"), ge=Decimal("0.05"), le=Decimal("0.95"))
    delta_tolerance: Decimal = Field(Decimal("0.10"), ge=Decimal("0.01"), le=Decimal("0.50"))
    entry_drop_pct: Decimal = Field(Decimal("1.0"), ge=Decimal("0.1"), le=Decimal("20"))
    roll_drop_pct: Decimal = Field(Decimal("5.0"), ge=Decimal("0.5"), le=Decimal("50"))
    max_positions: int = Field(3, ge=1, le=20)
    min_dte: int = Field(365, ge=30, le=1200)
    position_size: PositionSize = PositionSize()
    max_premium: Decimal = Field(Decimal(12000), ge=Decimal(100), le=Decimal(1_000_000))
    # 8 %: real 0.55–0.65-delta QQQ LEAPS are quoted about 5.6 % of the mid wide (median 5.00 USD,
    # February 2026, calm and −2 % days alike), 0.5–0.7 delta from ~5 % to ~6.5 %; at 5 % only 2–3
    # of the first LEAPS expiry's 17–18 strikes near 0.6 delta passed, so a normal dip day could
    # skip or pick whichever strike happened to quote tight. 8 % takes every normal quote and still
    # refuses a market far wider than usual (a stressed open); orders still start at the mid.
    max_spread_pct: Decimal = Field(Decimal("8.0"), ge=Decimal("0.1"), le=Decimal("50"))
    tp_tiers: tuple[Tier, ...] = DEFAULT_TIERS
    force_exit_days: int = Field(270, ge=1, le=1000)
    min_exit_dte: int = Field(30, ge=0, le=365)
    recycle_enabled: bool = True
    recycle_threshold: Decimal = Field(Decimal(500), ge=Decimal(0), le=Decimal(1_000_000))
    check_interval_min: int = Field(5, ge=1, le=60)
    delay_after_open_min: int = Field(5, ge=0, le=60)
    reprice_s: int = Field(15, ge=1, le=600)
    reprice_step_pct: Decimal = Field(Decimal(20), ge=Decimal(1), le=Decimal(100))
    max_slippage_pct: Decimal = Field(Decimal(50), ge=Decimal(0), le=Decimal(100))
    order_timeout_s: int = Field(120, ge=10, le=3600)
    max_quote_age_s: int = Field(60, ge=1, le=3600)
    risk_free_rate: Decimal = Field(Decimal("4.0"), ge=Decimal(0), le=Decimal(20))
    dividend_yield: Decimal = Field(Decimal("0.6"), ge=Decimal(0), le=Decimal(10))
    paused: PauseMode = PauseMode.OFF

    @field_validator("paused", mode="before")
    @classmethod
    def _pause_mode(cls, v: Any) -> Any:
        if isinstance(v, bool):  # a plain pause is a pause of everything, as before the two modes
            return PauseMode.ALL if v else PauseMode.OFF
        return v

    @field_validator("position_size", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):  # a plain number of contracts
            return PositionSize(contracts=v)
        return v

    @field_validator("position_size")
    @classmethod
    def _size_valid(cls, v: PositionSize) -> PositionSize:
        problem = v.problem()
        if problem is not None:
            raise ValueError(problem)
        return v

    @field_validator("tp_tiers")
    @classmethod
    def _tiers_valid(cls, tiers: tuple[Tier, ...]) -> tuple[Tier, ...]:
        return validate_tiers(tiers)

    @field_validator("check_interval_min")
    @classmethod
    def _interval_aligns(cls, v: int) -> int:
        if 60 % v:
            raise ValueError(f"must divide 60 so ticks align to the clock: {_divisors_text()} min")
        return v

    @model_validator(mode="after")
    def _timeouts_consistent(self) -> StrategySettings:
        if self.order_timeout_s <= self.reprice_s:
            raise ValueError(f"the order timeout ({self.order_timeout_s} s) must be longer than "
                             f"the reprice interval ({self.reprice_s} s)")
        return self

    def with_value(self, key: str, value: Any) -> StrategySettings:
        """A copy with one setting changed, validated like a fresh model (raises ValidationError)."""
        data = self.model_dump()
        data[key] = value
        return StrategySettings.model_validate(data)


def _divisors_text() -> str:
    divisors = [str(d) for d in range(1, 61) if 60 % d == 0]
    return ", ".join(divisors[:-1]) + " or " + divisors[-1]


def validate_tiers(tiers: tuple[Tier, ...]) -> tuple[Tier, ...]:
    """Tiers start at day 0, days strictly increase, targets are in (0, 1000] %."""
    if not tiers:
        raise ValueError("it needs at least one tier")
    days = [d for d, _ in tiers]
    if days[0] != 0:
        raise ValueError("the first tier must start at day 0")
    if any(b <= a for a, b in pairwise(days)):
        raise ValueError("the tier days must increase")
    for d, pct in tiers:
        if d < 0 or d > TIER_MAX_DAY:
            raise ValueError(f"tier days must be 0–{TIER_MAX_DAY}")
        if not (Decimal(0) < pct <= TIER_MAX_PCT):
            raise ValueError(f"tier targets must be above 0 % and at most {TIER_MAX_PCT} %")
    return tuple((int(d), Decimal(p)) for d, p in tiers)


@dataclass(frozen=True, slots=True)
class SettingSpec:
    """How one setting is shown, typed and edited: its key, kind, unit, group, human label, one
    line of help, the aliases ``/set`` accepts and the keyboard's presets."""

    key: str
    kind: Kind
    unit: str
    group: str
    label: str
    help: str
    aliases: tuple[str, ...] = ()
    presets: tuple[str, ...] = ()


_SPECS: tuple[SettingSpec, ...] = (
    SettingSpec("entry_drop_pct", "decimal", "%", "entry", "Entry drop",
                "QQQ's drop from the previous close that triggers an entry",
                ("entry_drop", "drop", "entry"), ("0.5", "1", "1.5", "2")),
    SettingSpec("target_delta", "decimal", "", "entry", "Delta of the call to buy",
                "the strike whose delta is closest to this is bought", ("delta",), ("0.5", "0.6", "0.7", "0.8")),
    SettingSpec("delta_tolerance", "decimal", "", "entry", "Delta tolerance",
                "the largest distance between a strike's delta and the target that is accepted",
                ("tolerance", "tol"), ("0.05", "0.1", "0.15")),
    SettingSpec("min_dte", "int", "days", "entry", "Shortest expiry",
                "a new LEAPS expires at least this many days out", ("dte",), ("365", "450", "540", "730")),
    SettingSpec("max_positions", "int", "lots", "entry", "Max lots",
                "lots held before entries stop and rolls start", ("max_pos", "positions", "max_lots"),
                ("1", "2", "3", "4", "5")),
    SettingSpec("position_size", "size", "contracts", "entry", "Position size",
                "a new lot's size: a number of contracts, or a share of net liquidation (10 %) bought at the limit",
                ("size", "order_quantity", "qty", "quantity", "contracts"), ("1", "2", "5%", "10%", "20%")),
    SettingSpec("max_premium", "decimal", "USD", "entry", "Max premium per entry",
                "an entry costing more than this is skipped", ("premium",), ("5000", "10000", "12000", "20000")),
    SettingSpec("max_spread_pct", "decimal", "%", "entry", "Max bid/ask spread",
                "the widest spread accepted, in % of the mid", ("spread", "max_spread"), ("5", "8", "12")),
    SettingSpec("tp_tiers", "tiers", "day:%", "exits", "Take-profit tiers",
                "from day N of holding, sell at +X %: day:percent pairs", ("tiers", "tp"),
                ("0:50,121:30,181:10", "0:40,121:25,181:10", "0:60,121:40,181:15")),
    SettingSpec("force_exit_days", "int", "days", "exits", "Force exit after",
                "a lot held this long is sold, whatever its P&L", ("force_exit", "max_hold"),
                ("180", "240", "270", "300")),
    SettingSpec("min_exit_dte", "int", "days", "exits", "Expiry guard",
                "a lot is sold when this few days are left to its expiry", ("exit_dte", "expiry_guard"),
                ("14", "30", "45", "60")),
    SettingSpec("roll_drop_pct", "decimal", "%", "roll", "Roll drop",
                "with every lot taken, a QQQ drop this large rolls the oldest lot", ("roll_drop", "roll"),
                ("3", "4", "5", "7")),
    SettingSpec("recycle_enabled", "bool", "", "recycling", "Recycling into QQQM",
                "buy QQQM shares with the realized option profits", ("recycle",), ("on", "off")),
    SettingSpec("recycle_threshold", "decimal", "USD", "recycling", "Recycling threshold",
                "the pool of profits needed before QQQM is bought", ("threshold", "recycle_min"),
                ("250", "500", "1000", "2000")),
    SettingSpec("check_interval_min", "int", "min", "orders", "Tick interval",
                "minutes between two evaluations of the strategy", ("interval", "check_interval"),
                ("1", "5", "10", "15")),
    SettingSpec("delay_after_open_min", "int", "min", "orders", "First tick after the open",
                "minutes after the open before the first evaluation", ("open_delay",), ("0", "5", "15", "30")),
    SettingSpec("max_quote_age_s", "int", "s", "orders", "Max quote age",
                "an older quote is stale and never triggers an order", ("quote_age", "max_quote_age"),
                ("30", "60", "120")),
    SettingSpec("reprice_s", "int", "s", "orders", "Reprice after",
                "an unfilled limit order is repriced this often", ("reprice",), ("10", "15", "30")),
    SettingSpec("reprice_step_pct", "decimal", "% of spread", "orders", "Reprice step",
                "each reprice moves the limit this far toward the far side", ("reprice_step", "step"),
                ("10", "20", "25")),
    SettingSpec("max_slippage_pct", "decimal", "% of spread", "orders", "Max slippage",
                "the limit never moves further than this from the mid", ("max_slippage", "slippage"),
                ("25", "50", "75", "100")),
    SettingSpec("order_timeout_s", "int", "s", "orders", "Order timeout",
                "an order still unfilled after this is cancelled", ("timeout", "order_timeout"),
                ("60", "120", "300")),
    SettingSpec("risk_free_rate", "decimal", "%", "orders", "Risk-free rate",
                "for the Black–Scholes delta when the broker gives none", ("rate", "r"), ("3", "4", "5")),
    SettingSpec("dividend_yield", "decimal", "%", "orders", "QQQ dividend yield",
                "for the Black–Scholes delta when the broker gives none", ("yield", "q"), ("0.5", "0.6", "0.8")),
    SettingSpec("paused", "choice", "", "pause", "Pause",
                "hold back automatic orders: off, entries (entries, rolls and recycling; exits go on) or all",
                ("pause",), ("off", "entries", "all")),
)

SETTING_SPECS: dict[str, SettingSpec] = {s.key: s for s in _SPECS}
GROUPS: tuple[str, ...] = ("entry", "exits", "roll", "recycling", "orders")  # ``paused`` stands on its own
GROUP_TITLES: dict[str, str] = {"entry": "Entry", "exits": "Exits", "roll": "Roll", "recycling": "Recycling",
                                "orders": "Orders", "pause": "Pause"}
GROUP_HELP: dict[str, str] = {
    "entry": "when a new lot is bought, and which call",
    "exits": "when a lot is sold",
    "roll": "when a full book sells its oldest lot and buys a new one",
    "recycling": "buying QQQM with the realized option profits",
    "orders": "ticks, limit prices, repricing, and the delta model",
    "pause": "holding back automatic orders",
}
_ALIASES: dict[str, str] = {}
for _s in _SPECS:
    _ALIASES[_s.key] = _s.key
    for _a in _s.aliases:
        _ALIASES[_a] = _s.key


def group_keys(group: str) -> tuple[str, ...]:
    """The settings of one group, in the order they are shown."""
    return tuple(s.key for s in _SPECS if s.group == group)


@dataclass(frozen=True, slots=True)
class SettingError:
    """A value the user typed that cannot be stored, with a message for the user."""

    message: str


@dataclass(frozen=True, slots=True)
class SettingChange:
    """A validated change: the canonical key, the old and the new value, and the new settings."""

    key: str
    old: Any
    new: Any
    settings: StrategySettings


def resolve_key(text: str) -> str | None:
    """The canonical setting name for a key or alias (case- and dash-insensitive), or None."""
    return _ALIASES.get(text.strip().lower().replace("-", "_"))


# --- how values read -------------------------------------------------------------------------------

_SINGULAR = {"days": "day", "lots": "lot", "contracts": "contract"}


def unit_text(key: str, value: Any = None) -> str:
    """The unit a value of ``key`` is shown with ("1 day", "3 days"), or "" for a plain number."""
    spec = SETTING_SPECS[key]
    if spec.kind in ("bool", "choice", "tiers"):
        return ""
    if spec.kind == "size":
        if isinstance(value, PositionSize) and value.pct is not None:
            return "of net liquidation"
        return "contract" if isinstance(value, PositionSize) and value.contracts == 1 else "contracts"
    if value is not None and spec.unit in _SINGULAR and Decimal(value) == 1:
        return _SINGULAR[spec.unit]
    return spec.unit


def display_value(key: str, value: Any) -> str:
    """A value with its unit, as the replies show it ("1.5 %", "365 days", "on", "10 % of net liquidation")."""
    unit = unit_text(key, value)
    text = format_value(key, value)
    if isinstance(value, PositionSize) and value.pct is not None:
        text = f"{_plain(value.pct)} %"
    elif unit == "USD" and isinstance(value, Decimal):
        text = f"{value.normalize():,f}"  # 12,000 USD, as every other amount is shown
    return f"{text} {unit}" if unit else text


def label_of(key: str) -> str:
    return SETTING_SPECS[key].label


def _in_sentence(label: str) -> str:
    """A label inside a sentence: "the order timeout" reads better than "Order timeout"."""
    return label[0].lower() + label[1:] if label[1:2].islower() else label


def _bounds(key: str) -> tuple[Decimal, Decimal]:
    lo = hi = None
    for m in StrategySettings.model_fields[key].metadata:
        lo = getattr(m, "ge", lo)
        hi = getattr(m, "le", hi)
    assert lo is not None and hi is not None, key
    return Decimal(lo), Decimal(hi)


def range_text(key: str) -> str:
    """The valid range and unit of a setting, as shown in error messages and help."""
    spec = SETTING_SPECS[key]
    if spec.kind == "bool":
        return "on or off"
    if spec.kind == "choice":
        return ", ".join(spec.presets[:-1]) + " or " + spec.presets[-1]
    if spec.kind == "size":
        return (f"1–{SIZE_MAX_CONTRACTS} contracts, or {_plain(SIZE_MIN_PCT)}–{_plain(SIZE_MAX_PCT)} % of net "
                "liquidation (e.g. 2, or 10 %)")
    if key == "check_interval_min":
        return f"{_divisors_text()} min (a divisor of 60, so ticks align to the clock)"
    if spec.kind == "tiers":
        return (f"day:percent pairs, the first at day 0, days increasing up to {TIER_MAX_DAY}, targets above 0 % "
                f"up to {TIER_MAX_PCT} %, e.g. 0:50,121:30,181:10")
    lo, hi = _bounds(key)
    return _span(key, lo, hi)


def valid_text(settings: StrategySettings, key: str) -> str:
    """The range valid *now*: a reprice interval must stay below the current order timeout."""
    if key == "reprice_s":
        timeout = settings.order_timeout_s
        return f"{_span(key, _bounds(key)[0], Decimal(timeout - 1))}, below Order timeout ({timeout} s)"
    if key == "order_timeout_s":
        reprice = settings.reprice_s
        return f"{_span(key, Decimal(reprice + 1), _bounds(key)[1])}, above Reprice after ({reprice} s)"
    return range_text(key)


def _span(key: str, lo: Decimal, hi: Decimal) -> str:
    unit = unit_text(key)
    if unit == "USD":  # amounts as every reply shows them: 1,000,000 USD
        return f"{lo.normalize():,f}–{hi.normalize():,f} {unit}"
    return f"{_plain(lo)}–{_plain(hi)}" + (f" {unit}" if unit else "")


def format_value(key: str, value: Any) -> str:
    """A setting's value as the user would type it back."""
    spec = SETTING_SPECS[key]
    if spec.kind == "bool":
        return "on" if value else "off"
    if spec.kind == "choice":
        return str(value.value if isinstance(value, StrEnum) else value)
    if spec.kind == "size":
        return value.text if isinstance(value, PositionSize) else str(value)
    if spec.kind == "tiers":
        return ",".join(f"{d}:{_plain(p)}" for d, p in value)
    if isinstance(value, Decimal):
        return _plain(value)
    return str(value)


def _plain(d: Decimal) -> str:
    return f"{d.normalize():f}"


# --- numbers ---------------------------------------------------------------------------------------

def parse_number(text: str, *, point_thousands_ambiguous: bool = False) -> Decimal | str:
    """A number as a user types it, or what is wrong with it, to follow the text in a message
    ("is ambiguous: …"): ``strategy.numbers.read_number``."""
    number = read_number(text, point_thousands_ambiguous=point_thousands_ambiguous)
    return number.why if isinstance(number, NotANumber) else number


# --- parsing a value -------------------------------------------------------------------------------

_TRUE = {"on", "true", "yes", "1", "enable", "enabled"}
_FALSE = {"off", "false", "no", "0", "disable", "disabled"}
_UNIT_WORDS: dict[str, str] = {"%": "%", "usd": "USD", "$": "USD", "days": "days", "day": "days", "d": "days",
                               "min": "min", "mins": "min", "s": "s", "sec": "s", "lots": "lots", "lot": "lots",
                               "contracts": "contracts", "contract": "contracts"}
_UNIT_SUFFIXES = sorted(_UNIT_WORDS, key=len, reverse=True)  # "contracts" before "s", "usd" before "d"


@dataclass(frozen=True, slots=True)
class _Problem:
    """Why a text is not a value of its setting; ``parse_setting`` adds the range valid now."""

    why: str


def _parse_raw(key: str, text: str, *, typed: bool = True) -> Any | _Problem:
    """A value of ``key`` from text; ``typed`` is False for stored text, which is always in the
    canonical form ``format_value`` wrote (so an old stored ``100.125`` is not taken for a
    thousands separator)."""
    spec = SETTING_SPECS[key]
    raw = text.strip()
    if spec.kind == "bool":
        low = raw.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        return _Problem(f"'{raw}' is not on or off")
    if spec.kind == "choice":
        return _parse_choice(key, raw)
    if spec.kind == "tiers":
        return _parse_tiers(raw)
    if spec.kind == "size":
        return _parse_size(raw, typed)
    return _parse_numeric(key, raw, typed)


def _parse_size(raw: str, typed: bool) -> PositionSize | _Problem:
    """``2``, ``2 contracts`` → 2 contracts; ``10%``, ``10 %``, ``0,5%`` → that share of net liquidation."""
    low = raw.lower().strip()
    for suffix in ("% of net liquidation", "% of netliq", "%"):
        if low.endswith(suffix):
            number = parse_number(low.removesuffix(suffix))
            if isinstance(number, str):
                return _Problem(f"'{raw}' {number}")
            return PositionSize(contracts=None, pct=number)
    for suffix in ("contracts", "contract"):
        if low.endswith(suffix) and len(low) > len(suffix):
            low = low.removesuffix(suffix).strip()
            break
    number = parse_number(low, point_thousands_ambiguous=typed)
    if isinstance(number, str):
        return _Problem(f"'{raw}' {number}")
    if number != number.to_integral_value():
        return _Problem(f"'{raw}' is not a whole number of contracts (for a share of net liquidation add %, "
                        "e.g. 10%)")
    return PositionSize(contracts=int(number))


def _split_unit(raw: str) -> tuple[str, str]:
    """(number text, unit word or "") from "1.5 %", "$9000", "400 days"."""
    low = raw.lower()
    if low.startswith("$"):
        return low[1:].strip(), "$"
    for suffix in _UNIT_SUFFIXES:
        if low.endswith(suffix) and len(low) > len(suffix):
            return low[: -len(suffix)].strip(), suffix
    return low, ""


def _unit_fits(spec: SettingSpec, word: str) -> bool:
    unit = _UNIT_WORDS[word]
    return spec.unit == unit or (unit == "%" and spec.unit.startswith("% "))


def _parse_numeric(key: str, raw: str, typed: bool) -> Decimal | int | _Problem:
    spec = SETTING_SPECS[key]
    number_text, unit_word = _split_unit(raw)
    if unit_word and not _unit_fits(spec, unit_word):
        unit_name = spec.unit or "a plain number"
        return _Problem(f"'{raw}' has the wrong unit: {_in_sentence(spec.label)} is in {unit_name}")
    number = parse_number(number_text, point_thousands_ambiguous=typed and (spec.kind == "int" or spec.unit == "USD"))
    if isinstance(number, str):
        return _Problem(f"'{raw}' {number}")
    if spec.kind == "int":
        if number != number.to_integral_value():
            return _Problem(f"'{raw}' is not a whole number")
        return int(number)
    return number


_PAUSE_WORDS = {"on": PauseMode.ALL, "true": PauseMode.ALL, "yes": PauseMode.ALL, "all": PauseMode.ALL,
                "everything": PauseMode.ALL, "off": PauseMode.OFF, "false": PauseMode.OFF, "no": PauseMode.OFF,
                "none": PauseMode.OFF, "entries": PauseMode.ENTRIES, "entry": PauseMode.ENTRIES,
                "new": PauseMode.ENTRIES}


def _parse_choice(key: str, raw: str) -> PauseMode | _Problem:
    value = _PAUSE_WORDS.get(raw.strip().lower()) if key == "paused" else None
    if value is None:
        return _Problem(f"'{raw}' is not one of the choices")
    return value


_TIER_DAY = re.compile(r"([0-9]{1,4})d?")


def _parse_tiers(raw: str) -> tuple[Tier, ...] | _Problem:
    tiers: list[Tier] = []
    for part in raw.replace(" ", "").split(","):
        if not part:
            continue
        day_text, sep, pct_text = part.partition(":")
        day = _TIER_DAY.fullmatch(day_text.lower())
        pct = parse_number(pct_text.removesuffix("%")) if sep else None
        if day is None or not isinstance(pct, Decimal):
            decimal_comma = bool(tiers) and part.isdigit()  # "0:50,5": the comma was meant as a decimal one
            hint = " (commas separate the tiers: write a decimal with a point, e.g. 0:50.5)" if decimal_comma else ""
            return _Problem(f"'{part}' is not day:percent{hint}")
        tiers.append((int(day.group(1)), pct))
    try:
        return validate_tiers(tuple(tiers))
    except ValueError as e:
        return _Problem(f"Take-profit tiers {raw or '(empty)'} refused: {e}")


# --- checking a value against the others -----------------------------------------------------------


def _refusal(settings: StrategySettings, key: str, value: Any) -> SettingError | None:
    """Why ``value`` cannot be stored for ``key`` given the other settings, in the user's words,
    with the range that is valid *now* (a reprice interval below the current order timeout)."""
    shown = f"{label_of(key)} = {display_value(key, value)} refused"
    if isinstance(value, PositionSize):
        return SettingError(f"{shown}: it must be {range_text(key)}.") if value.problem() else None
    if SETTING_SPECS[key].kind not in ("decimal", "int"):
        return None
    lo, hi = _bounds(key)
    if key == "reprice_s" and value >= settings.order_timeout_s:
        return SettingError(f"{shown}: it must be below Order timeout ({settings.order_timeout_s} s), so "
                            f"{_span(key, lo, Decimal(settings.order_timeout_s - 1))}. To go higher, raise "
                            "Order timeout first.")
    if key == "order_timeout_s" and value <= settings.reprice_s:
        return SettingError(f"{shown}: it must be above Reprice after ({settings.reprice_s} s), so "
                            f"{_span(key, Decimal(settings.reprice_s + 1), hi)}. To go lower, lower "
                            "Reprice after first.")
    if key == "check_interval_min" and not (lo <= value <= hi and 60 % value == 0):
        return SettingError(f"{shown}: it must be a divisor of 60 so ticks align to the clock: "
                            f"{_divisors_text()} min.")
    if not lo <= value <= hi:
        return SettingError(f"{shown}: it must be {_span(key, lo, hi)}.")
    return None


def parse_setting(settings: StrategySettings, key_text: str, value_text: str) -> SettingChange | SettingError:
    """Parse ``KEY VALUE`` as a user typed it into a validated change, or an error for the user."""
    key = resolve_key(key_text)
    if key is None:
        return unknown_key(key_text)
    value = _parse_raw(key, value_text)
    if isinstance(value, _Problem):
        return SettingError(f"{value.why}. {label_of(key)} must be {valid_text(settings, key)}.")
    refusal = _refusal(settings, key, value)
    if refusal is not None:
        return refusal
    try:
        new = settings.with_value(key, value)
    except ValidationError:  # a rule the checks above missed: still the product's words
        return SettingError(f"{label_of(key)} = {display_value(key, value)} refused: it must be "
                            f"{valid_text(settings, key)}.")
    return SettingChange(key=key, old=getattr(settings, key), new=getattr(new, key), settings=new)


SHORT_KEYS: tuple[str, ...] = ("drop", "delta", "size", "premium", "positions", "tp", "force_exit", "roll",
                               "recycle", "threshold")


def _label_key(label: str) -> str:
    return label.lower().replace("-", "_").replace(" ", "_").replace("/", "_")


def unknown_key(key_text: str) -> SettingError:
    """No such setting: the closest one (by key, alias or label) with its short name, and the short
    names of the common ones (not every internal key)."""
    typed = key_text.strip()
    spelled = typed.lower().replace("-", "_")
    names = dict(_ALIASES) | {_label_key(spec.label): spec.key for spec in _SPECS}
    close = difflib.get_close_matches(spelled, list(names), n=3, cutoff=0.6)
    keys = list(dict.fromkeys(names[c] for c in close))  # each setting once, the best match first
    hint = ""
    if keys:
        shown = [f"{min(SETTING_SPECS[k].aliases or (k,), key=len)} ({label_of(k)})" for k in keys]
        hint = f" Did you mean {' or '.join(shown)}?"
    return SettingError(f"Unknown setting '{typed}'.{hint} Short names: {', '.join(SHORT_KEYS)}; /settings shows "
                        "every setting and its name.")


def parse_assignment(settings: StrategySettings, text: str) -> SettingChange | SettingError:
    """Parse ``key=value`` (the backtest's ``--set``) with the chat's parser."""
    key, sep, value = text.partition("=")
    if not sep:
        return SettingError(f"'{text}' is not key=value, e.g. entry_drop=1.5.")
    return parse_setting(settings, key, value)


def settings_to_storage(settings: StrategySettings) -> dict[str, str]:
    """Every setting as the text the user would type, for the database."""
    return {k: format_value(k, getattr(settings, k)) for k in SETTING_SPECS}


def settings_from_storage(stored: dict[str, str]) -> tuple[StrategySettings, list[str]]:
    """Settings from stored text, defaults for the rest; names of unusable stored values returned."""
    values: dict[str, Any] = {}
    bad: list[str] = []
    for stored_key, text in stored.items():
        key = resolve_key(stored_key) or stored_key  # a setting renamed since (order_quantity → position_size)
        value = _parse_raw(key, text, typed=False) if key in SETTING_SPECS else _Problem(key)
        if isinstance(value, _Problem):
            bad.append(stored_key)
        elif key not in values or stored_key == key:
            values[key] = value
    try:
        return StrategySettings.model_validate(values), bad
    except ValidationError:
        pass
    settings = StrategySettings()
    for key, value in values.items():
        try:
            settings = settings.with_value(key, value)
        except ValidationError:
            bad.append(key)
    return settings, bad


def effective_settings_json(settings: StrategySettings) -> dict[str, Any]:
    """Every effective setting by canonical name, JSON-friendly (the backtest's ``settings``)."""
    out: dict[str, Any] = {}
    for key in SETTING_SPECS:
        v = getattr(settings, key)
        if key == "tp_tiers":
            out[key] = [[d, float(p)] for d, p in v]
        elif isinstance(v, PositionSize):
            out[key] = v.text
        elif isinstance(v, Decimal):
            out[key] = float(v)
        else:
            out[key] = v
    return out

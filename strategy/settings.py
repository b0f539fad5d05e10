"""The strategy's settings: every key, default, valid range and unit of the spec, and the parser
for values a user types (``/set delta 0.6``, ``entry_drop 1.5%``, ``--set tp_tiers=0:50,121:30``).

Percent settings are stored in percent (``entry_drop_pct = 1.5`` means 1.5 %), as the user types
them. A bad value is an error *value* (``SettingError``) whose message names the range and unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from itertools import pairwise
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Tier = tuple[int, Decimal]
Kind = Literal["decimal", "int", "bool", "tiers", "choice"]


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


class StrategySettings(BaseModel):
    """Every run-time setting of the strategy, with the spec's defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    target_delta: Decimal = Field(Decimal("0.60"), ge=Decimal("0.05"), le=Decimal("0.95"))
    delta_tolerance: Decimal = Field(Decimal("0.10"), ge=Decimal("0.01"), le=Decimal("0.50"))
    entry_drop_pct: Decimal = Field(Decimal("1.0"), ge=Decimal("0.1"), le=Decimal("20"))
    roll_drop_pct: Decimal = Field(Decimal("5.0"), ge=Decimal("0.5"), le=Decimal("50"))
    max_positions: int = Field(3, ge=1, le=20)
    min_dte: int = Field(365, ge=30, le=1200)
    order_quantity: int = Field(1, ge=1, le=100)
    max_premium: Decimal = Field(Decimal(12000), ge=Decimal(100), le=Decimal(1_000_000))
    max_spread_pct: Decimal = Field(Decimal("5.0"), ge=Decimal("0.1"), le=Decimal("50"))
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

    @field_validator("tp_tiers")
    @classmethod
    def _tiers_valid(cls, tiers: tuple[Tier, ...]) -> tuple[Tier, ...]:
        return validate_tiers(tiers)

    @field_validator("check_interval_min")
    @classmethod
    def _interval_aligns(cls, v: int) -> int:
        if 60 % v:
            raise ValueError("must divide 60 so ticks align to the clock (1, 2, 3, 5, 10, 15, 20, 30, 60)")
        return v

    @model_validator(mode="after")
    def _timeouts_consistent(self) -> StrategySettings:
        if self.order_timeout_s <= self.reprice_s:
            raise ValueError(
                f"order_timeout_s ({self.order_timeout_s} s) must be longer than reprice_s ({self.reprice_s} s)"
            )
        return self

    def with_value(self, key: str, value: Any) -> StrategySettings:
        """A copy with one setting changed, validated like a fresh model (raises ValidationError)."""
        data = self.model_dump()
        data[key] = value
        return StrategySettings.model_validate(data)


def validate_tiers(tiers: tuple[Tier, ...]) -> tuple[Tier, ...]:
    """Tiers start at day 0, days strictly increase, targets are in (0, 1000] %."""
    if not tiers:
        raise ValueError("needs at least one tier")
    days = [d for d, _ in tiers]
    if days[0] != 0:
        raise ValueError("the first tier must start at day 0")
    if any(b <= a for a, b in pairwise(days)):
        raise ValueError("tier days must strictly increase")
    for d, pct in tiers:
        if d < 0 or d > 1000:
            raise ValueError("tier days must be 0–1000")
        if not (Decimal(0) < pct <= Decimal(1000)):
            raise ValueError("tier targets must be above 0 % and at most 1000 %")
    return tuple((int(d), Decimal(p)) for d, p in tiers)


@dataclass(frozen=True, slots=True)
class SettingSpec:
    """How one setting is shown, typed and edited."""

    key: str
    kind: Kind
    unit: str
    group: str
    help: str
    aliases: tuple[str, ...] = ()
    presets: tuple[str, ...] = ()


_SPECS: tuple[SettingSpec, ...] = (
    SettingSpec("entry_drop_pct", "decimal", "%", "entry", "QQQ drop from previous close that triggers an entry",
                ("entry_drop", "drop", "entry"), ("0.5", "1", "1.5", "2")),
    SettingSpec("target_delta", "decimal", "", "entry", "delta of the call to buy", ("delta",),
                ("0.5", "0.6", "0.7", "0.8")),
    SettingSpec("delta_tolerance", "decimal", "", "entry", "largest |delta − target| accepted",
                ("tolerance", "tol"), ("0.05", "0.1", "0.15")),
    SettingSpec("min_dte", "int", "days", "entry", "shortest days to expiry for a new LEAPS", ("dte",),
                ("365", "450", "540", "730")),
    SettingSpec("max_positions", "int", "lots", "entry", "open lots before entries stop and rolls start",
                ("max_pos", "positions", "max_lots"), ("1", "2", "3", "4", "5")),
    SettingSpec("order_quantity", "int", "contracts", "entry", "contracts per entry", ("qty", "quantity"),
                ("1", "2", "3")),
    SettingSpec("max_premium", "decimal", "USD", "entry", "largest premium of one entry",
                ("premium",), ("5000", "10000", "12000", "20000")),
    SettingSpec("max_spread_pct", "decimal", "%", "entry", "widest bid/ask spread accepted, of the mid",
                ("spread", "max_spread"), ("2", "5", "10")),
    SettingSpec("tp_tiers", "tiers", "day:%", "exits", "take-profit target by held days",
                ("tiers", "tp"), ("0:50,121:30,181:10", "0:40,121:25,181:10", "0:60,121:40,181:15")),
    SettingSpec("force_exit_days", "int", "days", "exits", "sell a lot held this long, whatever the P&L",
                ("force_exit", "max_hold"), ("180", "240", "270", "300")),
    SettingSpec("min_exit_dte", "int", "days", "exits", "sell a lot this close to expiry",
                ("exit_dte", "expiry_guard"), ("14", "30", "45", "60")),
    SettingSpec("roll_drop_pct", "decimal", "%", "roll", "QQQ drop that rolls the oldest lot when full",
                ("roll_drop", "roll"), ("3", "4", "5", "7")),
    SettingSpec("recycle_enabled", "bool", "", "recycling", "buy QQQM with realized option profits",
                ("recycle",), ("on", "off")),
    SettingSpec("recycle_threshold", "decimal", "USD", "recycling", "pool needed before buying QQQM",
                ("threshold", "recycle_min"), ("250", "500", "1000", "2000")),
    SettingSpec("check_interval_min", "int", "min", "orders", "minutes between ticks",
                ("interval", "check_interval"), ("1", "5", "10", "15")),
    SettingSpec("delay_after_open_min", "int", "min", "orders", "minutes after the open before the first tick",
                ("open_delay",), ("0", "5", "15", "30")),
    SettingSpec("reprice_s", "int", "s", "orders", "seconds before an unfilled limit is repriced",
                ("reprice",), ("10", "15", "30")),
    SettingSpec("reprice_step_pct", "decimal", "% of spread", "orders", "each reprice step toward the far side",
                ("reprice_step", "step"), ("10", "20", "25")),
    SettingSpec("max_slippage_pct", "decimal", "% of spread", "orders", "furthest limit from the mid",
                ("max_slippage", "slippage"), ("25", "50", "75", "100")),
    SettingSpec("order_timeout_s", "int", "s", "orders", "seconds before an unfilled order is cancelled",
                ("timeout", "order_timeout"), ("60", "120", "300")),
    SettingSpec("max_quote_age_s", "int", "s", "orders", "a quote older than this is stale",
                ("quote_age", "max_quote_age"), ("30", "60", "120")),
    SettingSpec("risk_free_rate", "decimal", "%", "orders", "risk-free rate for Black–Scholes deltas",
                ("rate", "r"), ("3", "4", "5")),
    SettingSpec("dividend_yield", "decimal", "%", "orders", "QQQ dividend yield for Black–Scholes",
                ("yield", "q"), ("0.5", "0.6", "0.8")),
    SettingSpec("paused", "choice", "", "orders",
                "hold back automatic orders: entries (entries, rolls, recycling; exits go on) or all",
                ("pause",), ("off", "entries", "all")),
)

SETTING_SPECS: dict[str, SettingSpec] = {s.key: s for s in _SPECS}
GROUPS: tuple[str, ...] = ("entry", "exits", "roll", "recycling", "orders")
_ALIASES: dict[str, str] = {}
for _s in _SPECS:
    _ALIASES[_s.key] = _s.key
    for _a in _s.aliases:
        _ALIASES[_a] = _s.key


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


def range_text(key: str) -> str:
    """The valid range and unit of a setting, as shown in error messages and help."""
    spec = SETTING_SPECS[key]
    if spec.kind == "bool":
        return "on or off"
    if spec.kind == "choice":
        return " or ".join(spec.presets)
    if spec.kind == "tiers":
        return "day:percent pairs, first day 0, days increasing, e.g. 0:50,121:30,181:10"
    field = StrategySettings.model_fields[key]
    lo = hi = None
    for m in field.metadata:
        lo = getattr(m, "ge", lo)
        hi = getattr(m, "le", hi)
    unit = f" {spec.unit}" if spec.unit else ""
    if spec.unit == "%":
        unit = " %"
    return f"{lo}–{hi}{unit}"


def format_value(key: str, value: Any) -> str:
    """A setting's value as the user would type it back."""
    spec = SETTING_SPECS[key]
    if spec.kind == "bool":
        return "on" if value else "off"
    if spec.kind == "choice":
        return str(value.value if isinstance(value, StrEnum) else value)
    if spec.kind == "tiers":
        return ",".join(f"{d}:{_plain(p)}" for d, p in value)
    if isinstance(value, Decimal):
        return _plain(value)
    return str(value)


def _plain(d: Decimal) -> str:
    text = f"{d.normalize():f}"
    return text


_TRUE = {"on", "true", "yes", "1", "enable", "enabled"}
_FALSE = {"off", "false", "no", "0", "disable", "disabled"}


def _parse_raw(key: str, text: str) -> Any | SettingError:
    spec = SETTING_SPECS[key]
    raw = text.strip()
    where = f"{key} must be {range_text(key)}"
    if spec.kind == "bool":
        low = raw.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        return SettingError(f"'{raw}' is not on/off: {where}.")
    if spec.kind == "choice":
        return _parse_choice(key, raw, where)
    if spec.kind == "tiers":
        return _parse_tiers(raw, where)
    unit_given = ""
    low = raw.lower().replace(",", "").replace("_", "")
    for suffix in ("%", "usd", "$", "days", "day", "d", "min", "s"):
        if low.endswith(suffix) and len(low) > len(suffix):
            unit_given, low = suffix, low[: -len(suffix)].strip()
            break
    if low.startswith("$"):
        unit_given, low = "$", low[1:]
    if unit_given:
        ok = {
            "%": spec.unit == "%" or spec.unit.startswith("% "),
            "usd": spec.unit == "USD",
            "$": spec.unit == "USD",
            "days": spec.unit == "days",
            "day": spec.unit == "days",
            "d": spec.unit == "days",
            "min": spec.unit == "min",
            "s": spec.unit == "s",
        }[unit_given]
        if not ok:
            unit_name = spec.unit or "a plain number"
            return SettingError(f"'{raw}' has the wrong unit: {key} is in {unit_name}; {where}.")
    try:
        number = Decimal(low)
    except InvalidOperation:
        return SettingError(f"'{raw}' is not a number: {where}.")
    if not number.is_finite():
        return SettingError(f"'{raw}' is not a finite number: {where}.")
    if spec.kind == "int":
        if number != number.to_integral_value():
            return SettingError(f"'{raw}' is not a whole number: {where}.")
        return int(number)
    return number


_PAUSE_WORDS = {"on": PauseMode.ALL, "true": PauseMode.ALL, "yes": PauseMode.ALL, "all": PauseMode.ALL,
                "everything": PauseMode.ALL, "off": PauseMode.OFF, "false": PauseMode.OFF, "no": PauseMode.OFF,
                "none": PauseMode.OFF, "entries": PauseMode.ENTRIES, "entry": PauseMode.ENTRIES,
                "new": PauseMode.ENTRIES}


def _parse_choice(key: str, raw: str, where: str) -> PauseMode | SettingError:
    value = _PAUSE_WORDS.get(raw.strip().lower()) if key == "paused" else None
    if value is None:
        return SettingError(f"'{raw}' is not one of the choices: {where}.")
    return value


def _parse_tiers(raw: str, where: str) -> tuple[Tier, ...] | SettingError:
    tiers: list[Tier] = []
    for part in raw.replace(" ", "").split(","):
        if not part:
            continue
        day_text, sep, pct_text = part.partition(":")
        if not sep:
            return SettingError(f"'{part}' is not day:percent: {where}.")
        try:
            day = int(day_text.lower().rstrip("d"))
            pct = Decimal(pct_text.rstrip("%"))
        except (ValueError, InvalidOperation):
            return SettingError(f"'{part}' is not day:percent: {where}.")
        if not pct.is_finite():
            return SettingError(f"'{part}' is not day:percent: {where}.")
        tiers.append((day, pct))
    try:
        return validate_tiers(tuple(tiers))
    except ValueError as e:
        return SettingError(f"tp_tiers {e}: {where}.")


def parse_setting(settings: StrategySettings, key_text: str, value_text: str) -> SettingChange | SettingError:
    """Parse ``KEY VALUE`` as a user typed it into a validated change, or an error for the user."""
    key = resolve_key(key_text)
    if key is None:
        return SettingError(f"Unknown setting '{key_text.strip()}'. Known: {', '.join(SETTING_SPECS)}.")
    value = _parse_raw(key, value_text)
    if isinstance(value, SettingError):
        return value
    try:
        new = settings.with_value(key, value)
    except ValidationError as e:
        detail = "; ".join(str(err.get("msg", "")).removeprefix("Value error, ") for err in e.errors())
        return SettingError(f"{key} = {value_text.strip()} refused ({detail}): {key} must be {range_text(key)}.")
    return SettingChange(key=key, old=getattr(settings, key), new=getattr(new, key), settings=new)


def parse_assignment(settings: StrategySettings, text: str) -> SettingChange | SettingError:
    """Parse ``key=value`` (the backtest's ``--set``) with the chat's parser."""
    key, sep, value = text.partition("=")
    if not sep:
        return SettingError(f"'{text}' is not key=value.")
    return parse_setting(settings, key, value)


def settings_to_storage(settings: StrategySettings) -> dict[str, str]:
    """Every setting as the text the user would type, for the database."""
    return {k: format_value(k, getattr(settings, k)) for k in SETTING_SPECS}


def settings_from_storage(stored: dict[str, str]) -> tuple[StrategySettings, list[str]]:
    """Settings from stored text, defaults for the rest; names of unusable stored values returned."""
    values: dict[str, Any] = {}
    bad: list[str] = []
    for key, text in stored.items():
        value = _parse_raw(key, text) if key in SETTING_SPECS else SettingError(key)
        if isinstance(value, SettingError):
            bad.append(key)
        else:
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
        elif isinstance(v, Decimal):
            out[key] = float(v)
        else:
            out[key] = v
    return out

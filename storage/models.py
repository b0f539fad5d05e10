"""peewee models. The schema says what must hold: unique order references and execution ids,
foreign keys, non-null money stored exactly (Decimal as text, never a float)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from peewee import (
    AutoField,
    BigIntegerField,
    BooleanField,
    CharField,
    DatabaseProxy,
    DateField,
    Field,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)

from strategy.model import ExitReason
from strategy.order_lifecycle import ACTIVE_STATES as ACTIVE_STATES
from strategy.order_lifecycle import OrderState as OrderState

database_proxy = DatabaseProxy()


# --- the words the ledger stores, shared by storage and the shell ---------------------------------


class OrderPurpose(StrEnum):
    """Why an order was sent."""

    ENTRY = "entry"
    TAKE_PROFIT = "take_profit"
    FORCE_EXIT = "force_exit"
    EXPIRY_GUARD = "expiry_guard"
    ROLL = "roll"
    RECYCLE = "recycle"
    MANUAL = "manual"  # a sale an admin asked for (/sell)
    ADOPTED = "adopted"  # found working at the broker with the bot's reference, unknown to the ledger

    @property
    def label(self) -> str:
        """The purpose in the user's words."""
        return _PURPOSE_LABELS[self]

    @classmethod
    def for_exit(cls, reason: ExitReason) -> OrderPurpose:
        """The purpose of the sale an exit rule decided."""
        return cls(reason.value)

    @property
    def is_exit(self) -> bool:
        return self in (OrderPurpose.TAKE_PROFIT, OrderPurpose.FORCE_EXIT, OrderPurpose.EXPIRY_GUARD)


_PURPOSE_LABELS = {
    OrderPurpose.ENTRY: "entry", OrderPurpose.TAKE_PROFIT: "take profit", OrderPurpose.FORCE_EXIT: "force exit",
    OrderPurpose.EXPIRY_GUARD: "expiry guard", OrderPurpose.ROLL: "roll", OrderPurpose.RECYCLE: "recycling into QQQM",
    OrderPurpose.MANUAL: "manual sale", OrderPurpose.ADOPTED: "found at the broker",
}


class RollStatus(StrEnum):
    WORKING = "working"  # legs being sent
    BUY_PENDING = "buy_pending"  # sold; the buy leg is retried at the next ticks of its session
    COMPLETED = "completed"
    FAILED = "failed"  # nothing was sold: nothing rolled
    BUY_EXPIRED = "buy_expired"  # sold, but no buy during its session: the slot is free again


class LotExit(StrEnum):
    """How a lot was closed."""

    TAKE_PROFIT = "take_profit"
    FORCE_EXIT = "force_exit"
    EXPIRY_GUARD = "expiry_guard"
    ROLL = "roll"
    EXPIRED = "expired"  # reached its expiry unsold
    MANUAL = "manual"  # sold because an admin asked (/sell)
    UNKNOWN = "unknown"  # a sale the bot cannot attribute to one of its orders
    OUTSIDE = "outside"  # the account no longer holds it: sold (or exercised) outside the bot

    @property
    def label(self) -> str:
        """How the lot ended, in the user's words."""
        return {LotExit.TAKE_PROFIT: "take profit", LotExit.FORCE_EXIT: "force exit",
                LotExit.EXPIRY_GUARD: "expiry guard", LotExit.ROLL: "rolled", LotExit.EXPIRED: "expired unsold",
                LotExit.MANUAL: "sold by hand", LotExit.UNKNOWN: "sold outside the bot",
                LotExit.OUTSIDE: "closed outside the bot"}[self]


class EnumField(CharField):
    """A ``StrEnum`` stored as its value: only members can be written, members come back."""

    def __init__(self, enum: type[StrEnum], **kwargs: Any) -> None:
        self.enum = enum
        kwargs.setdefault("max_length", 20)
        super().__init__(**kwargs)

    def db_value(self, value: Any) -> str | None:
        if value is None:
            return None
        return str(self.enum(value).value)  # ValueError for anything that is not a member

    def python_value(self, value: Any) -> StrEnum | None:
        return None if value is None else self.enum(value)


class MoneyField(Field):
    """A Decimal stored as its exact text; peewee's DecimalField would round-trip through REAL on
    SQLite."""

    field_type = "TEXT"

    def db_value(self, value: Any) -> str | None:
        if value is None:
            return None
        d = value if isinstance(value, Decimal) else Decimal(str(value))
        if not d.is_finite():
            raise ValueError(f"money must be finite, got {value!r}")
        return format(d, "f")

    def python_value(self, value: Any) -> Decimal | None:
        return None if value is None else Decimal(value)


class UtcDateTimeField(Field):
    """An aware UTC datetime stored as ISO-8601 text (sortable)."""

    field_type = "TEXT"

    def db_value(self, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ValueError(f"datetimes must be timezone-aware, got {value!r}")
        return value.astimezone(UTC).isoformat(timespec="microseconds")

    def python_value(self, value: Any) -> datetime | None:
        return None if value is None else datetime.fromisoformat(value)


class BaseModel(Model):
    class Meta:
        database = database_proxy
        legacy_table_names = False


class SchemaVersion(BaseModel):
    version = IntegerField()
    applied_at = UtcDateTimeField()


class KeyValue(BaseModel):
    """Small durable facts: the last tick's decision, one-per-session alert markers, heartbeat."""

    key = CharField(primary_key=True, max_length=100)
    value = TextField()
    updated_at = UtcDateTimeField()


class Admin(BaseModel):
    user_id = BigIntegerField(unique=True)
    totp_secret_enc = TextField(null=True)
    totp_active = BooleanField(default=False)
    last_timecode = BigIntegerField(default=0)
    session_expires_at = UtcDateTimeField(null=True)
    locked_until = UtcDateTimeField(null=True)
    enrolled_at = UtcDateTimeField(null=True)


class LoginAttempt(BaseModel):
    user_id = BigIntegerField(index=True)
    at = UtcDateTimeField()
    ok = BooleanField()


class Setting(BaseModel):
    key = CharField(primary_key=True, max_length=64)
    value = TextField()
    updated_at = UtcDateTimeField()


class SettingChange(BaseModel):
    id = AutoField()
    key = CharField(max_length=64)
    old_value = TextField(null=True)
    new_value = TextField()
    who = CharField(max_length=100)
    at = UtcDateTimeField()


class Lot(BaseModel):
    id = AutoField()
    symbol = CharField(max_length=16)
    expiry = DateField()
    strike = MoneyField()
    right = CharField(max_length=1)
    multiplier = IntegerField(default=100)
    qty_opened = IntegerField(default=0)
    qty_open = IntegerField(default=0)
    avg_price = MoneyField(default=Decimal(0))
    commission = MoneyField(default=Decimal(0))  # entry commissions
    realized_pnl = MoneyField(default=Decimal(0))
    opened_at = UtcDateTimeField()
    closed_at = UtcDateTimeField(null=True)
    exit_reason = EnumField(LotExit, null=True)


class Roll(BaseModel):
    id = AutoField()
    session_day = DateField(index=True)
    old_lot = ForeignKeyField(Lot, backref="rolls_out")
    new_lot = ForeignKeyField(Lot, null=True, backref="rolls_in")
    if TYPE_CHECKING:  # peewee's id accessors of the foreign keys
        old_lot_id: int
        new_lot_id: int | None
    status = EnumField(RollStatus)
    combo = BooleanField()
    created_at = UtcDateTimeField()
    new_expiry = DateField(null=True)
    new_strike = MoneyField(null=True)


class Order(BaseModel):
    id = AutoField()
    order_ref = CharField(unique=True, max_length=64)
    broker_order_id = CharField(null=True, max_length=64)
    purpose = EnumField(OrderPurpose)
    session_day = DateField(index=True)
    lot = ForeignKeyField(Lot, null=True, backref="orders")
    roll = ForeignKeyField(Roll, null=True, backref="orders")
    if TYPE_CHECKING:
        lot_id: int | None
        roll_id: int | None
    request = TextField()  # the OrderRequest as JSON: legs, qty, limit
    side = CharField(max_length=4)
    sec_type = CharField(max_length=4)
    qty = IntegerField()
    limit = MoneyField()
    status = EnumField(OrderState, index=True)
    filled_qty = IntegerField(default=0)
    created_at = UtcDateTimeField()
    sent_at = UtcDateTimeField(null=True)
    finished_at = UtcDateTimeField(null=True)
    message = TextField(default="")
    context = TextField(default="{}")  # what the rules saw: underlying, prev_close, delta, held_days…


class Fill(BaseModel):
    id = AutoField()
    exec_id = CharField(unique=True, max_length=128)
    order = ForeignKeyField(Order, null=True, backref="fills")
    lot = ForeignKeyField(Lot, null=True, backref="fills")
    if TYPE_CHECKING:
        order_id: int | None
        lot_id: int | None
    symbol = CharField(max_length=16)
    sec_type = CharField(max_length=4)
    expiry = DateField(null=True)
    strike = MoneyField(null=True)
    right = CharField(max_length=1, null=True)
    side = CharField(max_length=4)
    qty = IntegerField()
    price = MoneyField()
    commission = MoneyField(null=True)  # None until the broker's commission report arrives
    realized_pnl = MoneyField(null=True)  # closing option fills only, net of commissions
    time = UtcDateTimeField(index=True)
    recorded_at = UtcDateTimeField()


class Recycle(BaseModel):
    id = AutoField()
    order = ForeignKeyField(Order, unique=True, backref="recycle")
    pool_before = MoneyField()
    shares_planned = IntegerField()
    created_at = UtcDateTimeField()


class Expiry(BaseModel):
    """A lot that reached its expiry unsold (no bid to sell into): closed at its settlement value,
    the intrinsic value at the expiry day's close (0 when worthless). Not a broker execution."""

    id = AutoField()
    lot = ForeignKeyField(Lot, unique=True, backref="expiry_record")
    if TYPE_CHECKING:
        lot_id: int
    expiry = DateField()
    qty = IntegerField()
    underlying_close = MoneyField(null=True)  # None: the expiry day's close was not known
    settlement = MoneyField()  # per share
    realized_pnl = MoneyField()
    recorded_at = UtcDateTimeField()


class AlertRecord(BaseModel):
    """Every alert the bot raised, and whether it reached its destination (an outbox)."""

    class Meta:
        table_name = "alert"

    id = AutoField()
    kind = CharField(max_length=40, index=True)
    text = TextField()
    created_at = UtcDateTimeField()
    status = CharField(max_length=10, default="pending", index=True)  # pending | sent | off | failed
    attempts = IntegerField(default=0)
    sent_at = UtcDateTimeField(null=True)
    silent = BooleanField(default=False)  # sent without sound whatever the kind's level (schema v2)
    actor = BigIntegerField(null=True)  # the admin whose own action raised it: they already have the reply (v4)
    thread = CharField(max_length=64, null=True, index=True)  # the order it belongs to, if any (v4)


class JournalEntry(BaseModel):
    """The decision journal: what the rules decided, or why they did not, one row each time a topic's
    decision or its reason changes (not one per tick). Topics: ``entry``, ``roll``, ``recycle``,
    ``quote`` (QQQ data), and ``lot:N`` for one lot's exit rules."""

    class Meta:
        table_name = "journal"

    id = AutoField()
    session_day = DateField(index=True)
    at = UtcDateTimeField()
    topic = CharField(max_length=32, index=True)
    lot = ForeignKeyField(Lot, null=True, backref="journal")
    if TYPE_CHECKING:
        lot_id: int | None
    key = CharField(max_length=64)  # what the decision was, in a stable form: equal keys = same decision
    text = TextField()  # the same, for the user


class AuditEntry(BaseModel):
    """Who did what from the chat, and when: manual orders, cancels, stops (settings changes and alert
    levels are in the settings change log)."""

    class Meta:
        table_name = "audit"

    id = AutoField()
    at = UtcDateTimeField(index=True)
    who = CharField(max_length=100)
    action = CharField(max_length=32)
    detail = TextField()


class LeapsQuote(BaseModel):
    """A quote of a long-dated option the bot asked its broker for (IB only), kept so that
    `qqq-bot calibrate --from-db` can fit the simulated market to what this account saw. Capped:
    the oldest rows go first (`storage.quotes.MAX_ROWS`)."""

    class Meta:
        table_name = "leaps_quote"

    id = AutoField()
    at = UtcDateTimeField(index=True)
    symbol = CharField(max_length=16)
    expiry = DateField()
    strike = MoneyField()
    right = CharField(max_length=1)
    bid = MoneyField()
    ask = MoneyField()
    underlying = MoneyField(null=True)


ALL_MODELS: list[type[BaseModel]] = [
    SchemaVersion,
    KeyValue,
    Admin,
    LoginAttempt,
    Setting,
    SettingChange,
    Lot,
    Roll,
    Order,
    Fill,
    Recycle,
    AlertRecord,
    Expiry,
    JournalEntry,
    AuditEntry,
    LeapsQuote,
]

_ = date  # re-exported for type users

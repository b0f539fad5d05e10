"""The TWS socket protocol as the fake gateway speaks it: 4-byte big-endian length prefix, fields
separated (and terminated) by NUL, the ``API\\0`` handshake, and builders for every message the
gateway sends, with the exact field lists `ib_async` 2.1.0 decodes at server version 178."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from broker.base import Instrument, StockContract
from strategy.model import OptionContract

SERVER_VERSION = 178
UNSET_DOUBLE = 1.7976931348623157e308
Field = object


def fmt(value: Field) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return repr(value)
    if isinstance(value, Decimal):
        return f"{value.normalize():f}" if value == value.to_integral_value() else str(value)
    return str(value)


def frame(fields: Sequence[Field]) -> bytes:
    payload = "".join(fmt(f) + "\0" for f in fields).encode()
    return struct.pack(">I", len(payload)) + payload


def split_frames(buf: bytearray) -> list[list[str]]:
    """Pop every complete frame from ``buf`` and return their fields."""
    out: list[list[str]] = []
    while len(buf) >= 4:
        (n,) = struct.unpack(">I", bytes(buf[:4]))
        if len(buf) < 4 + n:
            break
        payload = bytes(buf[4:4 + n]).decode(errors="backslashreplace")
        del buf[:4 + n]
        fields = payload.split("\0")
        if fields and fields[-1] == "":
            fields.pop()
        out.append(fields)
    return out


def ib_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y%m%d %H:%M:%S UTC")


# --- contracts ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GwContract:
    """A contract the gateway knows: its conId and what it is (a BAG has legs instead)."""

    con_id: int
    instrument: Instrument | None  # None for a BAG
    legs: tuple[tuple[int, int, str], ...] = ()  # (conId, ratio, action)
    bond: bool = False  # a bond position (shown, never traded)

    @property
    def sec_type(self) -> str:
        if self.instrument is None:
            return "BAG"
        if self.bond:
            return "BOND"
        return "OPT" if isinstance(self.instrument, OptionContract) else "STK"

    @property
    def symbol(self) -> str:
        return "QQQ" if self.instrument is None else self.instrument.symbol

    def core(self, exchange: str = "SMART", *, primary: bool = False) -> list[Field]:
        """conId, symbol, secType, lastTrade, strike, right, multiplier, exchange (or primary
        exchange), currency, localSymbol, tradingClass: 11 fields."""
        ins = self.instrument
        if isinstance(ins, OptionContract):
            exp = ins.expiry.strftime("%Y%m%d")
            local = f"{ins.symbol:<6}{ins.expiry.strftime('%y%m%d')}{ins.right}{int(ins.strike * 1000):08d}"
            return [self.con_id, ins.symbol, "OPT", exp, ins.strike, ins.right, str(ins.multiplier),
                    "" if primary else exchange, "USD", local, ins.symbol]
        if isinstance(ins, StockContract) and self.bond:
            return [self.con_id, ins.symbol, "BOND", "20330215", 0, "", "", "" if primary else exchange, "USD",
                    ins.symbol, "BOND"]
        if isinstance(ins, StockContract):
            return [self.con_id, ins.symbol, "STK", "", 0, "", "", "NASDAQ" if primary else exchange, ins.currency,
                    ins.symbol, "NMS"]
        return [self.con_id, "QQQ", "BAG", "", 0, "", "", "" if primary else exchange, "USD", "", "COMB"]


# --- message builders --------------------------------------------------------------------------


def error_msg(req_id: int, code: int, text: str) -> list[Field]:
    return [4, 2, req_id, code, text, ""]


def contract_details(req_id: int, c: GwContract, under_con_id: int) -> list[Field]:
    ins = c.instrument
    core = c.core()
    last = core[3]
    opt = isinstance(ins, OptionContract)
    return [
        10, req_id, core[1], core[2], last, core[4], core[5], "SMART", "USD", core[9],
        core[10], core[10], c.con_id, 0.01, core[6], "LMT,MKT", "SMART,CBOE,ISE", 1,
        under_con_id if opt else 0, f"{core[1]} option" if opt else "INVESCO QQQ TRUST SERIES 1",
        "" if opt else "NASDAQ", last[:6], "", "", "", "US/Eastern", "", "", "", "", 0,
        "1", core[1] if opt else "", "STK" if opt else "", "32", last, "ETF" if not opt else "", 1, 1, 1,
    ]


def tick_price(req_id: int, tick_type: int, price: float, size: float) -> list[Field]:
    return [1, 6, req_id, tick_type, price, size, 0]


def tick_size(req_id: int, tick_type: int, size: float) -> list[Field]:
    return [2, 6, req_id, tick_type, size]


def tick_option(req_id: int, tick_type: int, iv: float, delta: float, price: float, und: float) -> list[Field]:
    return [21, req_id, tick_type, 0, iv, delta, price, 0.0, -2.0, -2.0, -2.0, und]


def order_status(order_id: int, status: str, filled: float, remaining: float, avg: float, perm_id: int,
                 last: float, client_id: int) -> list[Field]:
    return [3, order_id, status, filled, remaining, avg, perm_id, 0, last, client_id, "", 0.0]


def open_order(order_id: int, c: GwContract, action: str, qty: float, limit: float, order_ref: str, client_id: int,
               perm_id: int, account: str, status: str) -> list[Field]:
    f: list[Field] = [5, order_id, *c.core()]
    f += [action, qty, "LMT", limit, "", "DAY", "", account, "", 0, order_ref, client_id, perm_id, 0, 0, 0, "",
          "", "", "", ""]  # ... sharesAllocation, faGroup, faMethod, faPercentage
    f += ["", "", "0", "", "", 0, "", -1, 0, "", "", "", "", "", 0, 0, 0, 0, "", 3, 0, 0, "", 0, 0, "", 0, "", ""]
    f += [0, 0, "", "", "", "", ""]  # continuousUpdate … comboLegsDescrip
    f += [len(c.legs)]
    for con_id, ratio, leg_action in c.legs:
        f += [con_id, ratio, leg_action, "SMART", 0, 0, "", -1]
    f += [0, 0]  # order combo legs, smart combo routing params
    f += ["", "", ""]  # scale init/subs level size, price increment
    f += [""]  # hedgeType
    f += [0, "", "", 0, 0]  # optOutSmartRouting, clearingAccount, clearingIntent, notHeld, dnc present
    f += [""]  # algoStrategy
    f += [0, 0, status] + [""] * 9 + ["", "", "", "", ""] + [0, 0]  # solicited … randomizePrice
    f += [0]  # conditions
    f += ["", "", "", "", "", "", "", 0, "", "", "", "", 0, 0, "", 0]
    f += ["", 0, 0]  # duration, postToAts, autoCancelParent
    f += ["", "", "", "", ""]  # minTradeQty … midOffsetAtHalf
    return f


def exec_details(req_id: int, order_id: int, c: GwContract, exec_id: str, t: datetime, account: str, side: str,
                 shares: float, price: float, perm_id: int, client_id: int, cum_qty: float, avg: float,
                 order_ref: str) -> list[Field]:
    return [11, req_id, order_id, *c.core("ISE"), exec_id, ib_time(t), account, "ISE", side, shares, price, perm_id,
            client_id, 0, cum_qty, avg, order_ref, "", "", "", 2, 0]


def commission_report(exec_id: str, commission: Decimal) -> list[Field]:
    return [59, 1, exec_id, commission, "USD", UNSET_DOUBLE, UNSET_DOUBLE, ""]


def position_msg(account: str, c: GwContract, qty: Decimal, avg_cost: Decimal) -> list[Field]:
    return [61, 3, account, *c.core(), qty, avg_cost]


def portfolio_msg(account: str, c: GwContract, qty: Decimal, price: Decimal, value: Decimal, avg_cost: Decimal
                  ) -> list[Field]:
    return [7, 8, *c.core(primary=True), qty, price, value, avg_cost, 0.0, 0.0, account]


def account_value(tag: str, value: object, currency: str, account: str) -> list[Field]:
    return [6, 2, tag, value, currency, account]

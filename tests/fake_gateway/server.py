"""A fake IB Gateway: an asyncio TCP server speaking the TWS socket protocol (server version 178)
well enough that the real `ib_async` client connects, qualifies contracts, reads option chains,
market data snapshots (live or delayed, with or without model greeks), history, positions and the
account, and places, modifies and cancels single-leg and combo (BAG) limit orders that fill by a
configurable model. It keeps its own record of orders and executions, and injects faults: latency,
dropped or refused connections, error codes.

IB behaviours it reproduces for the tests (see "Test controls" on `FakeGateway`): IB's servers lost
and restored behind an open socket (1100/1101/1102, also told to a client that connects meanwhile),
farm status messages, pacing (100) and subscription errors on market data (354/10167/10197),
history refused (162), no security definition (200), an order rejected (201) or cancelled by IB
(202) while working, fills while no client is connected (replayed by ``reqExecutions``), the
socket dropped at any message (a cancel lost on the way), reconnects refused while the gateway
restarts, trades made outside the bot (TWS, IBKR Mobile) and short option positions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Literal

from broker.base import Execution, Instrument, StockContract
from broker.sim_account import MIXED_EUR_CASH, SimAccount, multiplier
from broker.sim_fills import combo_prices, order_commission
from strategy.calendar import NY
from strategy.model import OptionContract

from . import protocol as p
from .market import STOCKS, FakeMarket

log = logging.getLogger(__name__)

STOCK_CON_IDS = {"QQQ": 320227571, "QQQM": 469367085, "AAPL": 265598}
BOND_CON_ID = 555000001
BAG_CON_ID = 28812380
FillKind = Literal["immediate", "partial", "delayed", "never"]
MD_ERROR_TEXT = {
    354: "Requested market data is not subscribed.",
    10089: "Requested market data requires additional subscription for API.",
    10167: "Requested market data is not subscribed. Displaying delayed market data.",
    10168: "Requested market data is not subscribed. Delayed market data is not enabled.",
    10197: "No market data during competing live session",
}


@dataclass(frozen=True)
class FillMode:
    """How the gateway fills a limit: ``immediate`` as soon as it is at or through the mid,
    ``partial`` the same but at most ``partial_qty`` per matching pass, ``delayed`` only once
    ``delay_s`` of gateway time passed (or on `FakeGateway.release`), ``never``. With
    ``late_commission`` commission reports wait for `FakeGateway.flush_commissions`."""

    kind: FillKind = "immediate"
    partial_qty: int = 1
    delay_s: float = 0.0
    late_commission: bool = False


@dataclass
class GwOrder:
    order_id: int
    client_id: int
    perm_id: int
    contract: p.GwContract
    action: str
    qty: int
    limit: Decimal
    order_ref: str
    account: str
    placed_at: datetime
    mode: FillMode
    status: str = "Submitted"
    filled: int = 0
    limits: list[Decimal] = field(default_factory=list)
    fees: dict[int, tuple[int, Decimal]] = field(default_factory=dict)
    released: bool = False

    @property
    def working(self) -> bool:
        return self.status in ("Submitted", "PreSubmitted")


@dataclass
class GwExecution:
    exec_id: str
    order: GwOrder
    contract: p.GwContract
    side: str  # BOT / SLD
    qty: int
    price: Decimal
    time: datetime
    cum_qty: int
    commission: Decimal | None  # None: a BAG summary line (no commission report)
    commission_sent: bool = False


class _Session(asyncio.Protocol):
    def __init__(self, gw: FakeGateway) -> None:
        self.gw = gw
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.handshaken = False
        self.client_id: int | None = None
        self.md_type = 1
        self.subs: dict[int, p.GwContract] = {}
        self.open_snapshots: set[int] = set()
        self.acct_sub = False
        self.portfolio_sent: set[int] = set()  # conIds whose position was last reported non-zero
        self.pos_sub = False  # reqPositions: every position change is pushed
        self._queue: asyncio.Queue[tuple[float, bytes]] | None = None
        self._writer: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.gw._refusing():  # the gateway restarting behind its port: accepted, then closed
            transport.close()
            return
        self.gw.sessions.append(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self in self.gw.sessions:
            self.gw.sessions.remove(self)
        if self._writer is not None:
            self._writer.cancel()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.handshaken:
            if len(self.buf) < 4:
                return
            if bytes(self.buf[:4]) != b"API\0":
                self.close()
                return
            rest = bytearray(self.buf[4:])
            frames = p.split_frames(rest)
            if not frames:
                return
            self.buf = rest
            self.handshaken = True
            self.gw.requests["handshake"] += 1
            self.send([p.SERVER_VERSION, self.gw.now().strftime("%Y%m%d %H:%M:%S UTC")])
        for fields in p.split_frames(self.buf):
            if self.transport is None or self.transport.is_closing():
                return  # dropped: what followed never arrived
            try:
                self.gw.handle(self, fields)
            except Exception:
                log.exception("fake gateway failed on %s", fields[:3])
                self.gw.failures.append(",".join(fields[:3]))

    def send(self, fields: list[p.Field]) -> None:
        if self.transport is None:
            return
        data = p.frame(fields)
        latency = self.gw.latency
        if latency <= 0 and (self._queue is None or self._queue.empty()):
            self.transport.write(data)
            return
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._writer = asyncio.get_running_loop().create_task(self._write_loop(), name="fake-gw-writer")
        self._queue.put_nowait((asyncio.get_running_loop().time() + latency, data))

    async def _write_loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            due, data = await self._queue.get()
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.transport is None:
                return
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class FakeGateway:
    """See the module docstring. ``now`` is the gateway's clock (fill times, history, expiry)."""

    def __init__(self, market: FakeMarket, *, now: Callable[[], datetime] | None = None, account: str = "DU1234567",
                 cash: Decimal = Decimal(100_000), mixed_account: bool = True, fill: FillMode | None = None) -> None:
        self.market = market
        self.now = now or (lambda: datetime.now(UTC))
        self.account_id = account
        self.fill = fill or FillMode()
        self.latency = 0.0
        self.md_error: int | None = None  # live market data refused with this code
        self.greeks = True
        self.greeks_missing: set[str] = set()  # contract keys sent without model greeks
        self.snapshot_never_ends = False
        self.hist_errors: list[tuple[int, str]] = []  # next historical requests fail with these
        self.reject_next: tuple[int, str] | None = None
        self.vanished: set[str] = set()  # instrument keys the gateway no longer knows
        self.match_on_sync = False  # match working orders at every reqCurrentTime (clock in another process)
        self.md_errors: list[tuple[int, str]] = []  # next market data requests fail with these (e.g. 100 pacing)
        self.servers_lost: int | None = None  # 1100: the gateway has lost IB's servers (socket stays up)
        self.allow_short = True  # selling more than the account holds opens a short position (as IB does)
        self._refuse: int | None = 0  # connection attempts still to refuse (None: all, until accept_connections)
        self._drops: list[tuple[str, bool]] = []  # (message kind, before?) at which every socket is dropped
        self._next_outside_id = 1
        self.host = "127.0.0.1"
        self.port = 0
        self.sessions: list[_Session] = []
        self.requests: Counter[str] = Counter()
        self.failures: list[str] = []
        self.orders: dict[int, GwOrder] = {}  # by permId
        self.executions: list[GwExecution] = []
        self.pending_commissions: list[GwExecution] = []
        self._server: asyncio.Server | None = None
        self._by_con: dict[int, p.GwContract] = {}
        self._by_key: dict[str, p.GwContract] = {}
        self._next_con = 700_000_001
        self._next_perm = 1_700_000_001
        self._next_exec = 1
        self._next_order_id: dict[int, int] = {}
        self._last_pass: datetime | None = None
        cash_map = {"USD": Decimal(cash)}
        if mixed_account:
            cash_map["EUR"] = MIXED_EUR_CASH
        self.account = SimAccount(cash_map)
        self.static: list[tuple[p.GwContract, Decimal, Decimal, Decimal]] = []  # contract, qty, avg cost, price
        if mixed_account:
            aapl = self._contract_for(StockContract("AAPL"))
            self.static.append((aapl, Decimal(50), Decimal("150.00"), Decimal("190.00")))
            bond = p.GwContract(BOND_CON_ID, StockContract("US91282CGM73"), bond=True)
            self.static.append((bond, Decimal(10), Decimal("980.00"), Decimal("965.00")))

    # --- life cycle ------------------------------------------------------------------------------

    async def start(self, port: int = 0) -> FakeGateway:
        self._server = await asyncio.get_running_loop().create_server(lambda: _Session(self), self.host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop_listening(self) -> None:
        """Refuse new connections (the port is closed); established ones stay."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def start_listening(self) -> None:
        if self._server is None:
            await self.start(self.port)

    def drop_connections(self) -> None:
        for s in list(self.sessions):
            s.close()

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        writers = [s._writer for s in self.sessions if s._writer is not None]
        self.drop_connections()
        for w in writers:
            w.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await w
        if server is not None:
            await server.wait_closed()
        await asyncio.sleep(0)

    # --- contracts -------------------------------------------------------------------------------

    def _contract_for(self, ins: Instrument) -> p.GwContract:
        c = self._by_key.get(ins.key)
        if c is None:
            if isinstance(ins, StockContract):
                con_id = STOCK_CON_IDS.get(ins.symbol) or self._take_con_id()
            else:
                con_id = self._take_con_id()
            c = p.GwContract(con_id, ins)
            self._by_key[ins.key] = c
            self._by_con[con_id] = c
        return c

    def _take_con_id(self) -> int:
        self._next_con += 1
        return self._next_con - 1

    def contract_of(self, ins: Instrument) -> p.GwContract:
        return self._contract_for(ins)

    def _resolve(self, spec: list[str]) -> p.GwContract | None:
        """conId, symbol, secType, lastTrade, strike, right, multiplier, exchange, primaryExch, currency, ..."""
        found = self._resolve_listed(spec)
        if found is not None and found.instrument is not None and found.instrument.key in self.vanished:
            return None  # delisted / no security definition any more
        return found

    def _resolve_listed(self, spec: list[str]) -> p.GwContract | None:
        con_id = int(spec[0] or 0)
        if con_id:
            return self._by_con.get(con_id)
        symbol, sec_type = spec[1], spec[2]
        now = self.now()
        if sec_type == "STK" and symbol in STOCKS:
            return self._contract_for(StockContract(symbol))
        if sec_type == "OPT" and symbol == "QQQ" and len(spec[3]) >= 8 and spec[4]:
            try:
                expiry = datetime.strptime(spec[3][:8], "%Y%m%d").date()
                strike = Decimal(spec[4])
                strike = Decimal(int(strike)) if strike == strike.to_integral_value() else strike.normalize()
                right = spec[5][:1].upper()
            except ValueError:
                return None
            if right not in ("C", "P"):
                return None
            oc = OptionContract("QQQ", expiry, strike, right)  # type: ignore[arg-type]
            return self._contract_for(oc) if self.market.is_listed(oc, now) else None
        return None

    # --- dispatch --------------------------------------------------------------------------------

    def handle(self, s: _Session, f: list[str]) -> None:
        msg = int(f[0])
        handler = _HANDLERS.get(msg)
        if handler is None:
            self.requests[f"unknown:{msg}"] += 1
            return
        kind = self._kind(s, msg, f)
        drop = next((d for d in self._drops if d[0] == kind), None)
        if drop is not None:
            self._drops.remove(drop)
            if drop[1]:  # before: the message is lost with the socket
                self.requests[f"lost:{kind}"] += 1
                self.drop_connections()
                return
        handler(self, s, f)
        if drop is not None:
            self.drop_connections()

    def _kind(self, s: _Session, msg: int, f: list[str]) -> str:
        if msg == 3:
            return "modify" if self._order_of(s.client_id, int(f[1])) is not None else "placeOrder"
        return _KINDS.get(msg, str(msg))

    def _hello(self, s: _Session, f: list[str]) -> None:  # startApi (71)
        s.client_id = int(f[2])
        self.requests["startApi"] += 1
        s.send([9, 1, self._next_order_id.get(s.client_id, 1)])
        s.send([15, 1, self.account_id])
        if self.servers_lost is not None:  # a client that connects meanwhile is told at once
            s.send(p.error_msg(-1, self.servers_lost, LOST_TEXT))
        else:
            for code, text in FARMS_OK:
                s.send(p.error_msg(-1, code, text))

    def _req_ids(self, s: _Session, f: list[str]) -> None:
        assert s.client_id is not None
        s.send([9, 1, self._next_order_id.get(s.client_id, 1)])

    def _current_time(self, s: _Session, f: list[str]) -> None:
        self.requests["currentTime"] += 1
        if self.match_on_sync:  # the client's clock lives in another process: catch up with it first
            self.match()
        s.send([49, 1, int(self.now().timestamp())])

    def _market_data_type(self, s: _Session, f: list[str]) -> None:
        self.requests["marketDataType"] += 1
        s.md_type = int(f[2])

    def _contract_details(self, s: _Session, f: list[str]) -> None:
        self.requests["contractDetails"] += 1
        req_id = int(f[2])
        c = self._resolve(f[3:15])
        if c is None:
            s.send(p.error_msg(req_id, 200, "No security definition has been found for the request"))
            return
        s.send(p.contract_details(req_id, c, STOCK_CON_IDS["QQQ"]))
        s.send([52, 1, req_id])

    def _sec_def_opt_params(self, s: _Session, f: list[str]) -> None:
        self.requests["secDefOptParams"] += 1
        req_id = int(f[1])
        now = self.now()
        if f[2] != "QQQ":
            s.send([76, req_id])
            return
        exps = [e.strftime("%Y%m%d") for e in self.market.expiries(now)]
        strikes = [float(k) for k in self.market.strikes(now)]
        for exch in ("SMART", "CBOE"):
            s.send([75, req_id, exch, STOCK_CON_IDS["QQQ"], "QQQ", "100", len(exps), *exps, len(strikes), *strikes])
        s.send([76, req_id])

    def _mkt_data(self, s: _Session, f: list[str]) -> None:
        self.requests["mktData"] += 1
        req_id = int(f[2])
        c = self._resolve(f[3:15])
        i = 15
        if f[5] == "BAG":
            i += 1 + 4 * int(f[15])
        if f[i] == "1":
            i += 3
        snapshot = f[i + 2] == "1"
        if c is None:
            s.send(p.error_msg(req_id, 200, "No security definition has been found for the request"))
            return
        if self.md_errors:
            code, text = self.md_errors.pop(0)
            s.send(p.error_msg(req_id, code, text))
            if snapshot:
                s.send([57, 1, req_id])
            return
        delayed = s.md_type in (3, 4)
        if not delayed and self.md_error is not None:
            s.send(p.error_msg(req_id, self.md_error, MD_ERROR_TEXT.get(self.md_error, "market data not subscribed")))
            if self.md_error != 10167:
                return
            delayed = True
        s.send([58, 1, req_id, 3 if delayed else 1])
        self._send_ticks(s, req_id, c, delayed)
        if snapshot:
            self.requests["snapshot"] += 1
            if self.snapshot_never_ends:
                s.open_snapshots.add(req_id)
            else:
                s.send([57, 1, req_id])
        else:
            s.subs[req_id] = c

    def _send_ticks(self, s: _Session, req_id: int, c: p.GwContract, delayed: bool) -> None:
        now = self.now()
        ins = c.instrument
        bid_t, ask_t, last_t, close_t, greeks_t = (66, 67, 68, 75, 83) if delayed else (1, 2, 4, 9, 13)
        if isinstance(ins, OptionContract):
            q = self.market.option_quote(ins, now)
            if q is None or q.bid is None or q.ask is None:
                return
            s.send(p.tick_price(req_id, bid_t, float(q.bid), 10.0 if q.bid > 0 else 0.0))
            s.send(p.tick_price(req_id, ask_t, float(q.ask), 10.0))
            if self.greeks and ins.key not in self.greeks_missing and q.delta is not None and q.iv is not None:
                mid = float((q.bid + q.ask) / 2)
                s.send(p.tick_option(req_id, greeks_t, q.iv, q.delta, mid, self.market.spot_at(now)))
        elif isinstance(ins, StockContract):
            sq = self.market.stock_quote(ins.symbol, now)
            if sq is None:
                return
            s.send(p.tick_price(req_id, bid_t, float(sq.bid), 300.0))
            s.send(p.tick_price(req_id, ask_t, float(sq.ask), 200.0))
            s.send(p.tick_price(req_id, last_t, float(sq.last), 100.0))
            if sq.close is not None:
                s.send(p.tick_price(req_id, close_t, float(sq.close), 0.0))

    def _cancel_mkt_data(self, s: _Session, f: list[str]) -> None:
        self.requests["cancelMktData"] += 1
        req_id = int(f[2])
        s.subs.pop(req_id, None)
        s.open_snapshots.discard(req_id)

    def _historical(self, s: _Session, f: list[str]) -> None:
        self.requests["historicalData"] += 1
        req_id = int(f[1])
        c = self._resolve(f[2:14])
        end_s, duration = f[15], f[17]
        if self.hist_errors:
            code, text = self.hist_errors.pop(0)
            s.send(p.error_msg(req_id, code, text))
            return
        if c is None or not isinstance(c.instrument, StockContract):
            s.send(p.error_msg(req_id, 200, "No security definition has been found for the request"))
            return
        n, unit = duration.split()
        days = int(n) * {"D": 1, "W": 7, "M": 31, "Y": 366}[unit]
        end = None
        if end_s:
            end = datetime.strptime(end_s[:17], "%Y%m%d %H:%M:%S").replace(tzinfo=UTC)
        bars = self.market.daily_bars(c.instrument.symbol, self.now(), end, days)
        what = f[19] if len(f) > 19 else "TRADES"
        msg: list[p.Field] = [17, req_id, "", "", len(bars)]
        for b in bars:
            if what == "OPTION_IMPLIED_VOLATILITY":  # the market's own volatility input, as IB's index of it
                v = self.market.iv.iv(b.day)
                msg += [b.day.strftime("%Y%m%d"), v, v, v, v, -1, v, -1]
            else:
                msg += [b.day.strftime("%Y%m%d"), b.open, b.high, b.low, b.close, 1000000.0, b.close, 1000]
        s.send(msg)

    # --- account -------------------------------------------------------------------------------------

    def _holdings(self) -> list[tuple[p.GwContract, Decimal, Decimal, Decimal]]:
        """(contract, qty, average cost per contract, market price per share) of every position."""
        now = self.now()
        out = list(self.static)
        for h in self.account.holdings.values():
            ins = h.instrument
            px = self._mark(ins, now)
            out.append((self._contract_for(ins), Decimal(h.qty), (h.cost / h.qty).quantize(Decimal("0.0001")),
                        px if px is not None else Decimal(0)))
        return out

    def _mark(self, ins: Instrument, now: datetime) -> Decimal | None:
        if isinstance(ins, OptionContract):
            q = self.market.option_quote(ins, now)
            return q.mid if q is not None else None
        sq = self.market.stock_quote(ins.symbol, now)
        return sq.last if sq is not None else None

    def _values(self) -> list[tuple[str, Decimal, str]]:
        positions = sum((px * q * _mult(c) for c, q, _, px in self._holdings()), Decimal(0))
        eur_usd = Decimal("1.08")
        cash_usd = sum((a * (eur_usd if cur == "EUR" else 1) for cur, a in self.account.cash.items()), Decimal(0))
        net = (cash_usd + positions).quantize(Decimal("0.01"))
        usd = self.account.usd.quantize(Decimal("0.01"))
        out = [("NetLiquidation", net, "USD"), ("TotalCashValue", cash_usd.quantize(Decimal("0.01")), "USD"),
               ("BuyingPower", (usd * 4).quantize(Decimal("0.01")), "USD"), ("AvailableFunds", usd, "USD"),
               ("GrossPositionValue", positions.quantize(Decimal("0.01")), "USD"),
               ("CashBalance", cash_usd.quantize(Decimal("0.01")), "BASE"), ("ExchangeRate", eur_usd, "EUR")]
        out += [("CashBalance", a.quantize(Decimal("0.01")), cur) for cur, a in self.account.cash.items()]
        return out

    def _account_updates(self, s: _Session, f: list[str]) -> None:
        self.requests["accountUpdates"] += 1
        s.acct_sub = f[2] == "1"
        if s.acct_sub:
            self._push_account(s)
            s.send([54, 1, self.account_id])

    def _push_account(self, s: _Session) -> None:
        for tag, value, cur in self._values():
            s.send(p.account_value(tag, value, cur, self.account_id))
        now_held = set()
        for c, qty, avg, px in self._holdings():
            mult = _mult(c)
            s.send(p.portfolio_msg(self.account_id, c, qty, px, (px * qty * mult).quantize(Decimal("0.01")), avg))
            now_held.add(c.con_id)
        for con_id in s.portfolio_sent - now_held:  # closed positions are reported with quantity 0
            c = self._by_con[con_id]
            s.send(p.portfolio_msg(self.account_id, c, Decimal(0), Decimal(0), Decimal(0), Decimal(0)))
        s.portfolio_sent = now_held
        s.send([8, 1, self.now().astimezone(NY).strftime("%H:%M")])

    def _account_updates_multi(self, s: _Session, f: list[str]) -> None:
        s.send([74, 1, int(f[2])])

    def _positions(self, s: _Session, f: list[str]) -> None:
        self.requests["positions"] += 1
        s.pos_sub = True
        for c, qty, avg, _ in self._holdings():
            s.send(p.position_msg(self.account_id, c, qty, avg))
        s.send([62, 1])

    def _account_summary(self, s: _Session, f: list[str]) -> None:
        req_id = int(f[2])
        for tag, value, cur in self._values():
            if cur != "BASE" and tag != "ExchangeRate":
                s.send([63, 1, req_id, self.account_id, tag, value, cur])
        s.send([64, 1, req_id])

    def _ignore(self, s: _Session, f: list[str]) -> None:
        self.requests[f"ignored:{f[0]}"] += 1

    # --- orders --------------------------------------------------------------------------------------

    def _order_of(self, client_id: int | None, order_id: int) -> GwOrder | None:
        for o in self.orders.values():
            if o.client_id == client_id and o.order_id == order_id:
                return o
        return None

    def order_by_ref(self, order_ref: str) -> GwOrder:
        for o in self.orders.values():
            if o.order_ref == order_ref:
                return o
        raise KeyError(order_ref)

    def _send_order(self, o: GwOrder, fields: list[p.Field]) -> None:
        for s in self.sessions:
            if s.client_id == o.client_id:
                s.send(fields)

    def _open_order_msg(self, o: GwOrder, status: str | None = None) -> list[p.Field]:
        return p.open_order(o.order_id, o.contract, o.action, float(o.qty), float(o.limit), o.order_ref, o.client_id,
                            o.perm_id, o.account, status or o.status)

    def _status_msg(self, o: GwOrder) -> list[p.Field]:
        execs = [e for e in self.executions if e.order is o]
        avg = float(sum(e.price * e.qty for e in execs) / sum(e.qty for e in execs)) if execs else 0.0
        last = float(execs[-1].price) if execs else 0.0
        if o.contract.legs:  # a combo's average is the net price
            avg = last = float(o.limit) if o.filled else 0.0
        return p.order_status(o.order_id, o.status, float(o.filled), float(o.qty - o.filled), avg, o.perm_id, last,
                              o.client_id)

    def _place_order(self, s: _Session, f: list[str]) -> None:
        self.requests["placeOrder"] += 1
        order_id = int(f[1])
        cid = s.client_id if s.client_id is not None else 0
        self._next_order_id[cid] = max(self._next_order_id.get(cid, 1), order_id + 1)
        action, qty, otype, limit_s, tif, account, ref = f[16], f[17], f[18], f[19], f[21], f[23], f[26]
        existing = self._order_of(s.client_id, order_id)
        limit = Decimal(limit_s).quantize(Decimal("0.0001")).normalize() if limit_s else Decimal(0)
        if existing is not None:
            if not existing.working:
                s.send(p.error_msg(order_id, 104, f"Can't modify a {existing.status.lower()} order"))
                return
            self.requests["modify"] += 1
            existing.limit = limit
            existing.limits.append(limit)
            existing.qty = int(float(qty))
            s.send(self._open_order_msg(existing))
            s.send(self._status_msg(existing))
            self._match(existing, self.now())
            return
        if self.reject_next is not None:
            code, text = self.reject_next
            self.reject_next = None
            s.send(p.error_msg(order_id, code, text))
            return
        if not self.allow_short and action == "SELL" and f[4] != "BAG":
            resolved = self._resolve(f[2:14])
            ins = resolved.instrument if resolved is not None else None
            if ins is not None and int(float(qty)) > self.account.held(ins) - self._selling(ins):
                s.send(p.error_msg(order_id, 201, "Order rejected - reason: YOUR ORDER IS NOT ACCEPTED. IN ORDER TO "
                                                  "OBTAIN THE DESIRED POSITION YOUR ACCOUNT MUST HAVE OPTION "
                                                  "PERMISSIONS FOR UNCOVERED CALLS"))
                return
        if f[4] == "BAG":
            n = int(f[35])
            legs = []
            for k in range(n):
                base = 36 + 8 * k
                legs.append((int(f[base]), int(f[base + 1]), f[base + 2]))
            if any(con not in self._by_con for con, _, _ in legs):
                s.send(p.error_msg(order_id, 200, "No security definition has been found for the request"))
                return
            contract = p.GwContract(BAG_CON_ID, None, tuple(legs))
        else:
            resolved = self._resolve(f[2:14])
            if resolved is None:
                s.send(p.error_msg(order_id, 200, "No security definition has been found for the request"))
                return
            contract = resolved
        if otype != "LMT" or tif not in ("DAY", ""):
            s.send(p.error_msg(order_id, 387, f"Unsupported order type/TIF {otype}/{tif} (the fake takes DAY LMT)"))
            return
        o = GwOrder(order_id, cid, self._next_perm, contract, action, int(float(qty)), limit, ref,
                    account or self.account_id, self.now(), self.fill, limits=[limit])
        self._next_perm += 1
        self.orders[o.perm_id] = o
        s.send(self._open_order_msg(o, "PreSubmitted"))
        s.send(self._status_msg(replace(o, status="PreSubmitted")))
        s.send(self._open_order_msg(o))
        s.send(self._status_msg(o))
        self._match(o, self.now())

    def _cancel_order(self, s: _Session, f: list[str]) -> None:
        self.requests["cancelOrder"] += 1
        order_id = int(f[2])
        o = self._order_of(s.client_id, order_id)
        if o is None or not o.working:
            state = o.status if o is not None else "unknown"
            s.send(p.error_msg(order_id, 10148, f"OrderId {order_id} that needs to be cancelled cannot be cancelled, "
                                                f"state: {state}."))
            return
        self._finish(o, "Cancelled")

    def _finish(self, o: GwOrder, status: str) -> None:
        o.status = status
        self._send_order(o, self._status_msg(o))

    def _open_orders(self, s: _Session, f: list[str]) -> None:
        self.requests["openOrders"] += 1
        everyone = f[0] == "16"
        for o in self.orders.values():
            if o.working and (everyone or o.client_id == s.client_id):
                s.send(self._open_order_msg(o))
                s.send(self._status_msg(o))
        s.send([53, 1])

    def _completed_orders(self, s: _Session, f: list[str]) -> None:
        s.send([102])

    def _executions(self, s: _Session, f: list[str]) -> None:
        self.requests["executions"] += 1
        req_id = int(f[2])
        since = None
        if f[5]:
            since = datetime.strptime(f[5].replace("-", " ")[:17], "%Y%m%d %H:%M:%S").replace(tzinfo=UTC)
        for e in self.executions:
            if since is not None and e.time < since:
                continue
            s.send(self._exec_msg(req_id, e))
            if e.commission is not None and (e.commission_sent or e not in self.pending_commissions):
                s.send(p.commission_report(e.exec_id, e.commission))
        s.send([55, 1, req_id])

    def _exec_msg(self, req_id: int, e: GwExecution) -> list[p.Field]:
        o = e.order
        return p.exec_details(req_id, o.order_id, e.contract, e.exec_id, e.time, o.account, e.side, float(e.qty),
                              float(e.price), o.perm_id, o.client_id, float(e.cum_qty), float(e.price), o.order_ref)

    # --- matching ------------------------------------------------------------------------------------

    def _leg_quotes(self, o: GwOrder, now: datetime) -> list[tuple[p.GwContract, str, tuple[Decimal, Decimal]]] | None:
        legs = [(self._by_con[con], act) for con, _, act in o.contract.legs] if o.contract.legs else \
            [(o.contract, o.action)]
        out = []
        for c, act in legs:
            ins = c.instrument
            if isinstance(ins, OptionContract):
                q = self.market.option_quote(ins, now)
                if q is None or q.bid is None or q.ask is None:
                    return None
                out.append((c, act, (q.bid, q.ask)))
            else:
                assert ins is not None
                sq = self.market.stock_quote(ins.symbol, now)
                if sq is None:
                    return None
                out.append((c, act, (sq.bid, sq.ask)))
        return out

    def _match(self, o: GwOrder, now: datetime, *, force: bool = False) -> None:
        mode = o.mode
        if not o.working or mode.kind == "never":
            return
        if mode.kind == "delayed" and not (force or o.released or
                                           (mode.delay_s > 0 and (now - o.placed_at).total_seconds() >= mode.delay_s)):
            return
        legs = self._leg_quotes(o, now)
        if legs is None:
            return
        if o.contract.legs:
            buy = next(q for _, a, q in legs if a == "BUY")
            sell = next(q for _, a, q in legs if a == "SELL")
            bid, ask = buy[0] - sell[1], buy[1] - sell[0]
        else:
            bid, ask = legs[0][2]
        mid = (bid + ask) / 2
        if not force and not (o.limit >= mid if o.action == "BUY" else o.limit <= mid):
            return
        qty = o.qty - o.filled
        if mode.kind == "partial":
            qty = min(qty, mode.partial_qty)
        self.execute(o, qty, now, legs)

    def execute(self, o: GwOrder, qty: int, now: datetime,
                legs: list[tuple[p.GwContract, str, tuple[Decimal, Decimal]]] | None = None,
                price: Decimal | None = None) -> list[GwExecution]:
        """Fill ``qty`` of ``o`` (also after a cancel: a late fill) at its limit (or ``price``, one
        leg) and report it to its client if connected."""
        legs = legs or self._leg_quotes(o, now)
        if legs is None and not o.contract.legs:  # no quote (e.g. a delisted contract): its own price
            legs = [(o.contract, o.action, (o.limit, o.limit))]
        assert legs is not None
        if o.contract.legs:
            prices = combo_prices(o.limit, [(a, q) for _, a, q in legs])  # type: ignore[misc]
        else:
            prices = [price if price is not None else o.limit]
        o.filled += qty
        made: list[GwExecution] = []
        for i, ((c, act, _), price) in enumerate(zip(legs, prices, strict=True)):
            ins = c.instrument
            assert ins is not None
            ratio = o.contract.legs[i][1] if o.contract.legs else 1
            n = qty * ratio
            done, charged = o.fees.get(i, (0, Decimal(0)))
            fee = order_commission(ins, done, charged, n, price)
            o.fees[i] = (done + n, charged + fee)
            e = GwExecution(self._exec_id(o), o, c, "BOT" if act == "BUY" else "SLD", n, price, now, done + n, fee)
            made.append(e)
            self.account.book(Execution(e.exec_id, o.order_ref, str(o.order_id), ins, act, n, price, now,  # type: ignore[arg-type]
                                        fee))
        if o.contract.legs:
            made.append(GwExecution(self._exec_id(o), o, o.contract, "BOT", qty, o.limit, now, o.filled, None))
        self.executions.extend(made)
        if o.working and o.filled >= o.qty:
            o.status = "Filled"
        for e in made:
            self._send_order(o, self._exec_msg(-1, e))
        for e in made:
            if e.commission is None:
                continue
            if o.mode.late_commission:
                self.pending_commissions.append(e)
            else:
                self._send_commission(e)
        if o.status in ("Submitted", "Filled"):
            self._send_order(o, self._status_msg(o))
        self._account_changed([e.contract for e in made if e.commission is not None])
        return made

    def _account_changed(self, contracts: list[p.GwContract]) -> None:
        """Push what IB pushes after a fill: the positions (to ``reqPositions`` subscribers) and
        the portfolio and account values (to ``reqAccountUpdates`` subscribers), to every client."""
        for s in self.sessions:
            if s.pos_sub:
                for c in contracts:
                    ins = c.instrument
                    assert ins is not None
                    qty = self.account.held(ins)
                    h = self.account.holdings.get(ins.key)
                    avg = (h.cost / h.qty).quantize(Decimal("0.0001")) if h is not None and h.qty else Decimal(0)
                    s.send(p.position_msg(self.account_id, c, Decimal(qty), avg))
            if s.acct_sub:
                self._push_account(s)

    def _send_commission(self, e: GwExecution) -> None:
        e.commission_sent = True
        assert e.commission is not None
        self._send_order(e.order, p.commission_report(e.exec_id, e.commission))

    def _exec_id(self, o: GwOrder) -> str:
        self._next_exec += 1
        return f"0000{o.perm_id:08x}.{self._next_exec - 1:08x}.01.01"

    # --- test controls -------------------------------------------------------------------------------

    def on_time(self, now: datetime) -> None:
        """A clock step (e.g. a `SimClock` listener): DAY orders expire at the close, others match."""
        for o in list(self.orders.values()):
            if not o.working:
                continue
            session = self.market.calendar.session(o.placed_at.astimezone(NY).date())
            if session is None or now >= session.close:
                self._finish(o, "Cancelled")
            else:
                self._match(o, now)

    def match(self) -> None:
        self.on_time(self.now())

    # The controls below are the IB behaviours the order-safety tests need. Each works whether or
    # not a client is connected; what a connected client would hear is sent to it at once.

    def drop_on(self, kind: str, *, before: bool = True) -> None:
        """Drop every client's socket when the next message of ``kind`` arrives: ``placeOrder``,
        ``modify``, ``cancelOrder``, ``openOrders`` (reqOpenOrders or reqAllOpenOrders),
        ``executions``, ``positions``, ``accountUpdates``, ``mktData``, ``contractDetails``,
        ``currentTime``. ``before``: the message is lost with the socket (a cancel that never
        arrived: the order keeps working); else it is handled and answered, then the socket drops.
        Several calls queue several drops."""
        if kind not in _KINDS.values() and kind not in ("placeOrder", "modify"):
            raise ValueError(f"unknown message kind {kind!r}")
        self._drops.append((kind, before))

    def refuse_connections(self, n: int | None = None) -> None:
        """Refuse the next ``n`` connection attempts (all of them with None, until
        `accept_connections`): accepted and closed at once, as the gateway container's port does
        while IB Gateway restarts or waits for its login. Established sessions stay."""
        self._refuse = n

    def accept_connections(self) -> None:
        self._refuse = 0

    def _refusing(self) -> bool:
        if self._refuse is None:
            self.requests["refused"] += 1
            return True
        if self._refuse > 0:
            self._refuse -= 1
            self.requests["refused"] += 1
            return True
        return False

    def restart(self, refuse: int | None = None) -> None:
        """The gateway's daily restart (or the nightly one): every socket closes, and the next
        ``refuse`` connection attempts are refused (None: until `accept_connections`, e.g. the
        weekly login waiting for the phone)."""
        self.refuse_connections(refuse)
        self.drop_connections()

    def lose_servers(self, code: int = 1100) -> None:
        """IB Gateway loses IB's servers (the nightly reset, a network fault): 1100 (or 2110) to
        every client; the socket stays up and a client that connects meanwhile hears it too."""
        self.servers_lost = code
        self.push_error(code, LOST_TEXT)

    def restore_servers(self, *, data_kept: bool = True) -> None:
        """IB's servers are back: 1102 (data maintained) or 1101 (data lost: the client must ask
        for its market and account data again)."""
        self.servers_lost = None
        if data_kept:
            self.push_error(1102, "Connectivity between IB and Trader Workstation has been restored - data "
                                  "maintained.")
        else:
            self.push_error(1101, "Connectivity between IB and Trader Workstation has been restored - data lost.")

    def fill_order(self, order_ref: str, qty: int | None = None, price: Decimal | None = None) -> list[GwExecution]:
        """Fill ``qty`` (default: all that remains) of a bot order at its limit (or ``price``),
        whatever its state and whether or not its client is connected: a client that is away
        learns it only from ``reqExecutions`` (and its positions) after it reconnects."""
        o = self.order_by_ref(order_ref)
        return self.execute(o, qty if qty is not None else o.qty - o.filled, self.now(), price=price)

    def cancel_by_ib(self, order_ref: str, reason: str = "Order Canceled - reason: cancelled by IB") -> None:
        """IB cancels a working order on its own (202 with the reason, then status Cancelled)."""
        o = self.order_by_ref(order_ref)
        if not o.working:
            raise ValueError(f"{order_ref} is not working")
        self._send_order(o, p.error_msg(o.order_id, 202, reason))
        self._finish(o, "Cancelled")

    def reject_working(self, order_ref: str, reason: str = "Order rejected - reason: insufficient margin") -> None:
        """IB rejects an order it had accepted (e.g. a margin check): 201 with the reason, then
        status Inactive."""
        o = self.order_by_ref(order_ref)
        if not o.working:
            raise ValueError(f"{order_ref} is not working")
        self._send_order(o, p.error_msg(o.order_id, 201, reason))
        self._finish(o, "Inactive")

    def outside_trade(self, ins: Instrument, side: str, qty: int, price: Decimal,
                      order_ref: str = "") -> GwExecution:
        """A trade made outside the bot (TWS, IBKR Mobile: client id 0, a non-bot ``order_ref``):
        it fills at once, changes the account's position (a SELL of more than is held goes short
        when ``allow_short``), and is visible in ``reqExecutions`` and the positions; API clients
        other than 0 get no live execution for it (as with IB)."""
        if side not in ("BUY", "SELL") or qty <= 0:
            raise ValueError("side BUY or SELL and a positive quantity")
        if side == "SELL" and not self.allow_short and qty > self.account.held(ins):
            raise ValueError("the account may not go short (allow_short is False)")
        c = self._contract_for(ins)
        self._next_outside_id += 1
        o = GwOrder(self._next_outside_id - 1, 0, self._next_perm, c, side, qty, price, order_ref, self.account_id,
                    self.now(), FillMode("never"), status="Filled", filled=qty, limits=[price])
        self._next_perm += 1
        self.orders[o.perm_id] = o
        now = self.now()
        fee = order_commission(ins, 0, Decimal(0), qty, price)
        e = GwExecution(self._exec_id(o), o, c, "BOT" if side == "BUY" else "SLD", qty, price, now, qty, fee,
                        commission_sent=True)
        self.executions.append(e)
        self.account.book(Execution(e.exec_id, order_ref, str(o.order_id), ins, side, qty, price, now,  # type: ignore[arg-type]
                                    fee))
        for s in self.sessions:  # only client 0 (TWS's own) hears of it live
            if s.client_id == 0:
                s.send(self._exec_msg(-1, e))
        self._account_changed([c])
        return e

    def position(self, ins: Instrument) -> int:
        """The account's position in ``ins`` (negative: short), as IB holds it."""
        return self.account.held(ins)

    def _selling(self, ins: Instrument) -> int:
        """Working SELL orders' remaining quantity of ``ins``."""
        return sum(o.qty - o.filled for o in self.orders.values()
                    if o.working and o.action == "SELL" and o.contract.instrument == ins)

    def release(self, order_ref: str) -> None:
        """Let a ``delayed`` order fill (at its limit if it crosses the mid)."""
        o = self.order_by_ref(order_ref)
        o.released = True
        self._match(o, self.now())

    def late_fill(self, order_ref: str, qty: int) -> list[GwExecution]:
        """A fill that arrives although the order was cancelled (IB's race)."""
        o = self.order_by_ref(order_ref)
        return self.execute(o, qty, self.now())

    def flush_commissions(self) -> None:
        pending, self.pending_commissions = self.pending_commissions, []
        for e in pending:
            self._send_commission(e)

    def push_error(self, code: int, text: str, req_id: int = -1) -> None:
        for s in self.sessions:
            s.send(p.error_msg(req_id, code, text))

    def working_orders(self) -> list[GwOrder]:
        return [o for o in self.orders.values() if o.working]

    def open_subscriptions(self) -> int:
        return sum(len(s.subs) + len(s.open_snapshots) for s in self.sessions)

    def set_day(self, day: date) -> None:  # pragma: no cover - convenience for manual runs
        del day


def _mult(c: p.GwContract) -> int:
    return multiplier(c.instrument) if c.instrument is not None and not c.bond else 1


LOST_TEXT = "Connectivity between IB and Trader Workstation has been lost."
FARMS_OK = ((2104, "Market data farm connection is OK:usfarm"), (2106, "HMDS data farm connection is OK:ushmds"),
            (2158, "Sec-def data farm connection is OK:secdefnj"))
_KINDS = {1: "mktData", 4: "cancelOrder", 5: "openOrders", 6: "accountUpdates", 7: "executions",
          9: "contractDetails", 16: "openOrders", 20: "historicalData", 49: "currentTime", 61: "positions"}

_HANDLERS: dict[int, Callable[[FakeGateway, _Session, list[str]], None]] = {
    1: FakeGateway._mkt_data,
    2: FakeGateway._cancel_mkt_data,
    3: FakeGateway._place_order,
    4: FakeGateway._cancel_order,
    5: FakeGateway._open_orders,
    6: FakeGateway._account_updates,
    7: FakeGateway._executions,
    8: FakeGateway._req_ids,
    9: FakeGateway._contract_details,
    16: FakeGateway._open_orders,
    20: FakeGateway._historical,
    25: FakeGateway._ignore,
    49: FakeGateway._current_time,
    59: FakeGateway._market_data_type,
    61: FakeGateway._positions,
    62: FakeGateway._account_summary,
    63: FakeGateway._ignore,
    64: FakeGateway._ignore,
    71: FakeGateway._hello,
    76: FakeGateway._account_updates_multi,
    78: FakeGateway._sec_def_opt_params,
    99: FakeGateway._completed_orders,
}


def session_now(day: date, hour: int = 11, minute: int = 0) -> datetime:
    """An instant of ``day`` in New York time, as aware UTC."""
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=NY).astimezone(UTC) + timedelta(0)

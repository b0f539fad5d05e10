"""What the control plane asks of the bot: one method per command, returning plain views for the
formatters. Every broker call here has a short timeout, so a slow or hung broker turns into a
note in the reply ("quote unavailable") and never delays a command; nothing here trades except
through the engine and the settings service."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import TypeVar

from bot.control import manual
from bot.control import period_reports as reports
from bot.control.broker_cache import BROKER_TIMEOUT_S, BrokerCache
from bot.control.manual import Done, EntryPreview, Refusal, SellPreview
from bot.control.views import (
    AccountView,
    ComparisonView,
    LotRow,
    OrdersView,
    PnlView,
    PositionsView,
    StatusView,
    TradeRow,
)
from bot.engine.engine import Engine
from bot.engine.settings_service import SettingsService
from bot.engine.tick_report import TickReport
from bot.lab import chat_backtest
from broker.base import Position
from storage import auth, ledger
from strategy.accounting import unrealized_pnl
from strategy.calendar import NY
from strategy.exposure import Exposure, exposure
from strategy.model import OptionContract, OptionQuote
from strategy.rules import lot_pnl_pct, take_profit_target
from strategy.settings import PauseMode, SettingChange, SettingError, StrategySettings, parse_setting

log = logging.getLogger(__name__)
T = TypeVar("T")
CHECK_TIMEOUT_S = 60.0
ZERO = Decimal(0)


async def _nothing() -> None:
    return None


@dataclass(frozen=True, slots=True)
class BacktestSources:
    """Where /backtest takes its data when not from the broker (BACKTEST_CSV / BACKTEST_IV), the
    interest on idle cash it credits (BACKTEST_CASH_RATE), and the option market's parameters it
    prices with (SIM_PRICING, as the sim broker; empty: the built-in ones)."""

    csv: str | None = None
    iv: str | None = None
    cash_rate: str = "0"
    pricing: str = ""


class BotService:
    def __init__(self, engine: Engine, settings: SettingsService, mode: str,
                 backtest: BacktestSources | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.mode = mode
        self.cache = BrokerCache(engine.clock.now)
        self.backtest_sources = backtest or BacktestSources()
        self.backtests = chat_backtest.Runner()

    async def _ask(self, key: str, what: str, factory: Callable[[], Awaitable[T]], notes: list[str]) -> T | None:
        snap = self.engine.last_snapshot
        if snap is not None:  # the tick's own view of the market is an answer too
            self.cache.remember("quote:QQQ", snap.qqq, snap.now)
        return await self.cache.get(key, what, factory, notes)

    def _today(self) -> date:
        return self.engine.clock.now().astimezone(NY).date()

    # --- read-only --------------------------------------------------------------------------------

    async def status(self, user_id: int | None = None) -> StatusView:
        notes: list[str] = []
        eng, s = self.engine, self.settings.current
        now = eng.clock.now()
        session = eng.calendar.open_session(now)
        day = session.day if session is not None else self._today()
        quote, prev = await asyncio.gather(
            self._ask("quote:QQQ", "QQQ quote", lambda: eng.broker.quote("QQQ"), notes),
            self._ask(f"prev_close:{day}", "previous close", lambda: eng.prev_close(day), notes),
        )
        last = quote.last if quote is not None and quote.last is not None else (quote.mid if quote else None)
        change = (last / prev - 1) * 100 if last is not None and prev else None
        if eng.blocked:
            notes.insert(0, f"NOT TRADING: {eng.blocked}")
        last_time, last_summary = eng.last_tick()
        return StatusView(
            mode=self.mode, broker=eng.broker.name, connection=eng.broker.state.value, paused=s.paused,
            market_open=session is not None, qqq_last=last, prev_close=prev, change_pct=change,
            next_tick=eng.calendar.next_tick(now, s.check_interval_min, s.delay_after_open_min),
            last_tick_time=last_time, last_tick_summary=last_summary, open_lots=len(ledger.open_lots()),
            max_positions=s.max_positions, notes=tuple(notes),
            connection_detail=eng.broker.detail,
            connection_down_for=now - since if (since := eng.broker.down_since) is not None else None,
            market_data=eng.broker.market_data,
            session_until=auth.session_expires_at(user_id) if user_id is not None and auth.has_session(
                user_id, now) else None,
        )

    async def positions(self) -> PositionsView:
        notes: list[str] = []
        lots = ledger.open_lots()
        s = self.settings.current
        today = self._today()
        contracts = [lot.contract for lot in lots]
        broker = self.engine.broker
        got, positions, account = await asyncio.gather(  # asked side by side: one budget, not three
            self._ask("option_quotes:" + ",".join(c.key for c in contracts), "option quotes",
                      lambda: broker.option_quotes(contracts), notes) if contracts else _nothing(),
            self._ask("positions", "positions", broker.positions, notes),
            self._ask("account", "account summary", broker.account_summary, notes),
        )
        quotes: dict[object, OptionQuote] = {q.contract: q for q in got or []}
        rows = []
        for lot in lots:
            q = quotes.get(lot.contract)
            mid = q.mid if q is not None else None
            held = lot.held_days(today)
            pct = lot_pnl_pct(mid, lot.avg_price) if mid is not None and lot.avg_price > 0 else None
            usd = unrealized_pnl(lot.avg_price, mid, lot.qty, lot.contract.multiplier) if mid is not None else None
            value = mid * lot.qty * lot.contract.multiplier if mid is not None else None
            rows.append(LotRow(lot.id, lot.contract.key, lot.qty, lot.avg_price, mid, pct, usd, held,
                               take_profit_target(held, s.tp_tiers), s.force_exit_days - held,
                               lot.contract.dte(today), value))
        held_by_bot: dict[OptionContract, int] = {}  # summed: two lots often hold the same contract
        for lot in lots:
            held_by_bot[lot.contract] = held_by_bot.get(lot.contract, 0) + lot.qty
        others: dict[str, list[Position]] = {"stock": [], "option": [], "bond": []}
        cash: dict[str, Decimal] = {}
        for p in positions or []:
            if p.category == "cash":
                cash[p.currency] = cash.get(p.currency, ZERO) + (p.market_value or p.qty)
                continue
            if p.contract is not None and p.contract in held_by_bot:
                rest = p.qty - held_by_bot[p.contract]
                if rest == 0:
                    continue
                besides = " (besides the bot's lots)" if len([x for x in lots if x.contract == p.contract]) > 1 \
                    else " (besides the bot's lot)"
                p = Position(p.category, p.symbol, p.description + besides, rest, p.avg_cost,
                             p.market_price, None, p.currency, p.contract)
            others.setdefault(p.category, []).append(p)
        if not cash and account is not None:
            cash = dict(account.cash_by_currency)
        return PositionsView(tuple(rows), {k: tuple(v) for k, v in others.items()}, cash, tuple(notes))

    async def account(self) -> AccountView:
        notes: list[str] = []
        shares, cost = ledger.qqqm_bought()
        broker = self.engine.broker
        account, q = await asyncio.gather(
            self._ask("account", "account summary", broker.account_summary, notes),
            self._ask("quote:QQQM", "QQQM quote", lambda: broker.quote("QQQM"), notes) if shares else _nothing(),
        )
        value = None
        if shares:
            price = (q.last or q.mid) if q is not None else None
            value = price * shares if price is not None else None
        return AccountView(account, shares, cost, value, ledger.recycling_pool(), tuple(notes),
                           self.settings.current.recycle_threshold)

    def trades(self, n: int) -> list[TradeRow]:
        rows = []
        for f in reversed(ledger.fills_in_order(limit=n)):
            order = f.order
            what = f.symbol if f.sec_type != "OPT" else (
                f"{f.symbol} {f.expiry.isoformat() if f.expiry else '?'} {Decimal(f.strike).normalize():f}{f.right}")
            rows.append(TradeRow(f.time, f.side, f.qty, what, f.price, f.commission, f.realized_pnl,
                                 order.purpose.label if order is not None else "outside the bot"))
        return rows

    async def pnl(self) -> PnlView:
        notes: list[str] = []
        positions, account = await asyncio.gather(self.positions(), self.account())
        notes.extend(positions.notes)
        unrealized: Decimal | None = ZERO
        for row in positions.lots:
            if row.pnl_usd is None:
                unrealized = None
                break
            unrealized = (unrealized or ZERO) + row.pnl_usd
        notes.extend(n for n in account.notes if n not in notes)
        curve, total = [], ZERO
        for at, pnl, _, _ in ledger.realized_option_events():  # closing fills and unsold expiries
            total += pnl
            curve.append((at, total))
        closed = ledger.closed_lot_pnls()
        return PnlView(total, unrealized, account.qqqm_cost, account.qqqm_value,
                       account.pool, len(closed), sum(1 for p in closed if p > 0), tuple(curve), tuple(notes),
                       self.settings.current.recycle_threshold)

    def current_settings(self) -> StrategySettings:
        return self.settings.current

    # --- changing ---------------------------------------------------------------------------------

    async def set_setting(self, key: str, value: str, who: str) -> SettingChange | SettingError:
        """Change a setting. Taken under the engine's send lock: a pause (``paused``) is in force for
        every order not yet sent once this returns."""
        async with self.engine.send_lock:
            return self.settings.update(key, value, who)

    def preview_setting(self, key: str, value: str) -> SettingChange | SettingError:
        """What ``/set KEY VALUE`` would change, stored nowhere (a change that raises the money at
        risk is confirmed first)."""
        return parse_setting(self.settings.current, key, value)

    async def net_liquidation(self) -> Decimal | None:
        """The account's net liquidation within the reply budget (None when the broker has not told)."""
        account = await self._ask("account", "account summary", self.engine.broker.account_summary, [])
        return account.net_liquidation if account is not None and account.net_liquidation > 0 else None

    def exposures(self, change: SettingChange, net_liquidation: Decimal | None) -> tuple[Exposure, Exposure]:
        """The money a new lot takes before and after ``change``, at the last lot's contract price."""
        cost = ledger.last_contract_cost()
        base = self.settings.current
        return exposure(base, net_liquidation, cost), exposure(change.settings, net_liquidation, cost)


    async def set_paused(self, mode: PauseMode, who: str) -> SettingChange | SettingError:
        """Pause or resume; once this returns, no automatic order the pause holds back leaves the bot
        (an order already at the broker keeps working: `working_order_lines` names them)."""
        return await self.set_setting("paused", mode.value, who)

    def working_order_lines(self) -> list[str]:
        """The orders already at the broker, one line each, for the pause reply."""
        return manual.working_order_lines()

    # --- manual control ---------------------------------------------------------------------------

    async def sell_preview(self, lot_id: int) -> SellPreview | Refusal:
        try:
            return await asyncio.wait_for(manual.sell_preview(self.engine, lot_id), BROKER_TIMEOUT_S)
        except TimeoutError:
            return Refusal("the broker did not give a quote in time; try again")

    async def sell(self, lot_id: int, who: str) -> Done | Refusal:
        return await manual.sell(self.engine, lot_id, who)

    async def enter_preview(self) -> EntryPreview | Refusal:
        try:
            return await asyncio.wait_for(manual.enter_preview(self.engine), CHECK_TIMEOUT_S)
        except TimeoutError:
            return Refusal("the broker did not answer in time; try again")

    async def enter(self, who: str, expected_contract: str, seen: int = 0,
                    another: bool = False) -> Done | EntryPreview | Refusal:
        return await manual.enter(self.engine, who, expected_contract, seen, another)

    async def orders(self) -> OrdersView:
        notes: list[str] = []
        orders = tuple(manual.working_orders())
        quotes: dict[str, tuple[Decimal | None, Decimal | None]] = {}
        contracts = {o.order_ref: ledger.order_instruments(o.order_ref) for o in orders}
        options = [c for cs in contracts.values() for c in cs if isinstance(c, OptionContract)]
        if options:
            keys = ",".join(sorted({c.key for c in options}))
            got = await self._ask(f"option_quotes:{keys}", "option quotes",
                                  lambda: self.engine.broker.option_quotes(options), notes) or []
            by_key = {q.contract.key: q for q in got}
            for ref, cs in contracts.items():
                if len(cs) == 1 and cs[0].key in by_key:
                    q = by_key[cs[0].key]
                    quotes[ref] = (q.bid, q.ask)
        return OrdersView(orders, quotes, self.engine.clock.now(), tuple(notes))

    async def cancel(self, order_id: int | None, who: str) -> list[str] | Refusal:
        return await manual.cancel(self.engine, order_id, who)

    async def stop(self, who: str) -> list[str]:
        return await manual.stop(self.engine, who)

    async def sell_all(self, who: str) -> list[str]:
        return await manual.sell_all(self.engine, who)

    async def open_lot_count(self) -> int:
        return len(ledger.open_lots())

    async def check(self) -> TickReport:
        """Evaluate a tick now and say what it would do and why not, without trading; after the close,
        as at the next open from the last prices."""
        eng = self.engine
        if eng.calendar.open_session(eng.clock.now()) is None:
            return await asyncio.wait_for(eng.preview_next_open(), CHECK_TIMEOUT_S)
        return await asyncio.wait_for(eng.tick(dry_run=True), CHECK_TIMEOUT_S)

    def market_open(self) -> bool:
        return self.engine.calendar.open_session(self.engine.clock.now()) is not None

    # --- what would this change have done? --------------------------------------------------------

    def backtest_busy(self) -> str | None:
        """Why a new backtest must wait, or None."""
        r = self.backtests
        if r.running_since is None:
            return None
        return (f"a backtest is already running (asked at {r.running_since.astimezone(NY):%H:%M:%S} ET"
                f"{' by ' + r.who if r.who else ''}); wait for its answer, then ask again")

    async def backtest(self, request: chat_backtest.Request, who: str) -> ComparisonView | Refusal:
        """The current settings, and the same with the request's changes, backtested over the last
        ``request.years`` years in a separate process. One at a time."""
        busy = self.backtest_busy()
        if busy is not None:
            return Refusal(busy)
        r = self.backtests
        now = self.engine.clock.now()
        r.running_since, r.who = now, who
        try:
            return await self._backtest(request, now)
        except chat_backtest.BacktestRefusal as e:
            return Refusal(str(e))
        finally:
            r.running_since, r.who = None, ""

    async def _backtest(self, request: chat_backtest.Request, now: datetime) -> ComparisonView:
        import tempfile
        from pathlib import Path

        src = self.backtest_sources
        current = self.settings.current
        notes: list[str] = []
        account = await self._ask("account", "account summary", self.engine.broker.account_summary, notes)
        capital = account.net_liquidation.quantize(Decimal(1)) if account is not None and \
            account.net_liquidation > 0 else Decimal(100_000)
        runs = [("current settings", tuple(chat_backtest.overrides_of(current)))]
        if request.changes:
            runs.append((chat_backtest.describe(request.changes),
                         tuple(chat_backtest.overrides_of(request.changes[-1].settings))))
        with tempfile.TemporaryDirectory(prefix="qqq-chat-data-") as tmp:
            data = await asyncio.wait_for(chat_backtest.load_data(
                self.engine.broker, now.astimezone(NY).date(), now, request.years, src.csv, src.iv, Path(tmp)),
                CHECK_TIMEOUT_S * 2)
            job = chat_backtest.Job(data.bars, data.iv, capital, src.cash_rate, self.engine.limits, tuple(runs),
                                    src.pricing)
            try:
                outcome = await chat_backtest.run_in_process(job)
            except TimeoutError:
                raise chat_backtest.BacktestRefusal("the backtest took too long and was stopped") from None
            except Exception as e:  # a setting or data problem the worker met: one line, logged
                log.exception("chat backtest failed")
                raise chat_backtest.BacktestRefusal(f"the backtest failed: {type(e).__name__}: {e}") from e
        first = outcome.curves[0].summary
        return ComparisonView(request.years, first["start"], first["end"], data.source, capital,
                              tuple(outcome.curves), outcome.png, tuple(data.notes) + tuple(notes), outcome.wall_s)

    # --- understanding -----------------------------------------------------------------------------

    def journal_day(self) -> reports.DayJournal:
        """Today's decisions (or, on a day without a session, the last session's)."""
        now = self.engine.clock.now()
        day = now.astimezone(NY).date()
        if not self.engine.calendar.is_session(day) or (s := self.engine.calendar.session(day)) is None \
                or now < s.open:
            prev = self.engine.calendar.previous_session(day)
            day = prev.day if prev is not None else day
        return reports.day_journal(day)

    def lot_story(self, lot_id: int) -> reports.LotStory | None:
        return reports.lot_story(lot_id)

    def period_pnl(self, period: reports.Period, n: int) -> list[reports.PeriodRow]:
        """The last ``n`` weeks or months; for days, the last ``n`` sessions (weekends and holidays
        only when something was realized on them)."""
        today = self._today()
        if period != "day":
            return reports.period_report(period, today, n)
        cal = self.engine.calendar
        sessions: list[date] = []
        day: date | None = today if cal.is_session(today) else getattr(cal.previous_session(today), "day", None)
        while day is not None and len(sessions) < n:
            sessions.append(day)
            prev = cal.previous_session(day)
            day = prev.day if prev is not None else None
        return reports.days_report(sessions, today)

    def recent_logs(self, n: int) -> list[str]:
        from bot.logs import recent_lines

        return recent_lines(n)

    def version(self) -> dict[str, str]:
        from importlib import metadata

        out = {}
        for dist in ("qqq-leaps-bot", "python-telegram-bot", "ib_async"):
            try:
                out[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                out[dist] = "not installed"
        import sys

        out["python"] = sys.version.split()[0]
        return out

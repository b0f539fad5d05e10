"""Telegram message formatting (HTML parse mode). Every value is escaped; every line is complete
HTML on its own, so a long message can be split between lines; nothing here computes strategy
figures, it only lays out what the service returns."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal

from bot.control.manual import EntryPreview, SellPreview, WorkingOrder
from bot.control.period_reports import DayJournal, LotStory, PeriodRow
from bot.control.views import AccountView, ComparisonView, OrdersView, PnlView, PositionsView, StatusView, TradeRow
from bot.engine.alerts import Event, EventKind
from bot.engine.settings_service import pause_text
from bot.engine.tick_report import TickReport
from strategy import number_style as num
from strategy.calendar import NY
from strategy.exposure import Exposure
from strategy.settings import (
    GROUP_TITLES,
    GROUPS,
    PauseMode,
    SettingChange,
    SettingError,
    StrategySettings,
    format_value,
    group_keys,
    label_of,
    unit_text,
)

LIMIT = 4096
ALERT_TEXT_LIMIT = 3000


def e(value: object) -> str:
    """Escape any value for HTML parse mode."""
    return html.escape(str(value), quote=False)


def money(value: Decimal | None, currency: str = "USD", signed: bool = False) -> str:
    """Money in the one style of ``strategy.numbers``: ``12,000.00 USD``, ``−380.00 USD``."""
    return num.usd(value, sign=signed, currency=currency)


def pct(value: Decimal | None) -> str:
    return num.percent(value)


def mark(value: Decimal | None) -> str:
    """A colour for a P&L: green up, red down."""
    if value is None:
        return "⚪"
    return "🟢" if value > 0 else ("🔴" if value < 0 else "⚪")


def ny(t: datetime | None) -> str:
    return "—" if t is None else t.astimezone(NY).strftime("%Y-%m-%d %H:%M ET")


def duration(d: timedelta) -> str:
    """How long, as a phone reads it: "45 s", "12 min", "2 h 05 min", "3 d 4 h"."""
    seconds = max(0, int(d.total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours = minutes // 60
    if hours < 48:
        return f"{hours} h {minutes % 60:02d} min"
    return f"{hours // 24} d {hours % 24} h"


def split_message(text: str, limit: int = LIMIT) -> list[str]:
    """Split at line boundaries into chunks of at most ``limit`` characters; a single longer line
    is cut (its tags were closed on the line, so only that line loses its end)."""
    chunks: list[str] = []
    current = ""
    for line in text.split("\n"):
        if len(line) > limit:
            line = _cut(line, limit)
        candidate = line if not current else current + "\n" + line
        if len(candidate) > limit:
            chunks.append(current)
            current = line
        else:
            current = candidate
    if current or not chunks:
        chunks.append(current)
    return chunks


def _cut(line: str, limit: int) -> str:
    """The start of an over-long line as plain escaped text ending in "…", within ``limit``."""
    plain = html.unescape(_strip_tags(line))
    n = limit - 1
    while n > 0 and len(e(plain[:n])) > limit - 1:
        n = min(n - 1, n * (limit - 1) // len(e(plain[:n])))
    return e(plain[:max(n, 0)]) + "…"


def _strip_tags(text: str) -> str:
    out, inside = [], False
    for ch in text:
        if ch == "<":
            inside = True
        elif ch == ">":
            inside = False
        elif not inside:
            out.append(ch)
    return "".join(out)


def notes_lines(notes: Iterable[str]) -> list[str]:
    return [f"⚠️ <i>{e(n)}</i>" for n in notes]


# --- commands ------------------------------------------------------------------------------------

def help_text(mode_label: str, groups: Iterable[tuple[str, Sequence[str]]]) -> str:
    """/help: the commands by group, one line each, from the command table."""
    lines = [f"<b>QQQ LEAPS bot</b> {e(mode_label)}".rstrip()]
    lines += [f"{e(title)}: " + " ".join(f"/{e(cmd)}" for cmd in commands) for title, commands in groups]
    lines += ["Changes need a session (/login CODE). <code>/help sell</code> explains one command."]
    return "\n".join(lines)


def pause_line(mode: PauseMode) -> str:
    """/status's line: what a pause holds back, bold where it matters."""
    head, _, rest = pause_text(mode).partition(": ")
    return f"⏸ <b>{e(head.lower())}</b>: {e(rest)}" if mode else "▶️ running"


def status_text(v: StatusView, label: str) -> str:
    conn_icon = {"connected": "🟢", "degraded": "🟡", "down": "🔴"}.get(v.connection, "⚪")
    lines = [
        f"<b>Status</b> {e(label)}".rstrip(),
        f"Broker: {e(v.broker)}{'' if v.mode == v.broker else f' ({e(v.mode)})'} {conn_icon} {e(v.connection)}"
        + (f" for {e(duration(v.connection_down_for))}" if v.connection == "down" and v.connection_down_for else "")
        + (f" — {e(v.connection_detail)}" if v.connection != "connected" and v.connection_detail else ""),
        f"Automatic orders: {pause_line(v.paused)}",
        f"Market: {'open' if v.market_open else 'closed'}",
    ]
    if v.qqq_last is not None:
        lines.append(f"QQQ: <code>{v.qqq_last:.2f}</code> {mark(v.change_pct)} {e(pct(v.change_pct))} "
                     f"vs prev close {e(money(v.prev_close, ''))}")
    else:
        lines.append("QQQ: —")
    if v.market_data == "delayed":
        lines.append("⚠️ Delayed market data (no real-time subscription): shown, never traded on")
    lines.append(f"Lots: {v.open_lots} / {v.max_positions}")
    lines.append(f"Your session: open until {e(ny(v.session_until))}" if v.session_until is not None else
                 "Your session: none (read-only; /login CODE to change things)")
    lines.append(f"Next tick: {e(ny(v.next_tick))}")
    if v.last_tick_time:
        last = datetime.fromisoformat(v.last_tick_time)
        lines.append(f"Last tick ({e(ny(last))}): {e(num.restyle(v.last_tick_summary or ''))}")
    else:
        lines.append("Last tick: none yet")
    lines += notes_lines(v.notes)
    return "\n".join(lines)


def positions_text(v: PositionsView, label: str) -> str:
    lines = [f"<b>Positions</b> {e(label)}".rstrip()]
    if not v.lots:
        lines.append("The bot holds no LEAPS lot.")
    for lot in v.lots:
        lines += [
            "",
            f"<b>#{lot.id} {e(lot.contract)}</b> × {lot.qty}",
            f"entry <code>{lot.entry:.2f}</code> · mid <code>{e(money(lot.mid, ''))}</code> · "
            f"{mark(lot.pnl_pct)} {e(pct(lot.pnl_pct))} ({e(money(lot.pnl_usd, 'USD', signed=True))})",
            f"value <code>{e(money(lot.value))}</code>",
            f"held {lot.held_days} d · target +{lot.target_pct:.0f} % · force exit in {lot.days_to_force_exit} d "
            f"· DTE {lot.dte}",
        ]
    if v.lots:
        lines += ["", f"<b>The bot's lots</b>: {len(v.lots)}, worth <code>{e(money(v.lots_value))}</code> at the mid, "
                  f"{mark(v.lots_pnl)} <code>{e(money(v.lots_pnl, 'USD', signed=True))}</code> unrealized"]
    titles = {"stock": "Stocks", "option": "Options", "bond": "Bonds"}
    for cat, title in titles.items():
        rows = v.others.get(cat, ())
        if not rows:
            continue
        lines += ["", f"<b>{title}</b>"]
        for p in rows:
            value = money(p.market_value, p.currency) if p.market_value is not None else "—"
            lines.append(f"{e(p.description or p.symbol)}: <code>{p.qty.normalize():f}</code> · {e(value)}")
    if v.cash:
        lines += ["", "<b>Cash</b>"]
        lines += [f"{e(cur)}: <code>{e(num.plain(amount))}</code>" for cur, amount in sorted(v.cash.items())]
    lines += notes_lines(v.notes)
    return "\n".join(lines)


def account_text(v: AccountView, label: str) -> str:
    lines = [f"<b>Account</b> {e(label)}".rstrip()]
    a = v.account
    if a is not None:
        lines += [
            f"Net liquidation: <code>{e(money(a.net_liquidation, a.base_currency))}</code>",
            f"Buying power: <code>{e(money(a.buying_power, a.base_currency))}</code>",
            f"Available funds (USD): <code>{e(money(a.available_funds_usd))}</code>",
        ]
        for cur, amount in sorted(a.cash_by_currency.items()):
            lines.append(f"Cash {e(cur)}: <code>{e(num.plain(amount))}</code>")
    lines += [
        f"QQQM core (bought by recycling): {v.qqqm_shares} shares, cost <code>{e(money(v.qqqm_cost))}</code>, "
        f"value <code>{e(money(v.qqqm_value))}</code>",
        f"Recycling pool: {e(num.pool_text(v.pool, v.threshold))}",
    ]
    lines += notes_lines(v.notes)
    return "\n".join(lines)


def trades_text(rows: Sequence[TradeRow], label: str) -> str:
    title = "Fills" if not rows else ("Last fill" if len(rows) == 1 else f"Last {len(rows)} fills")
    lines = [f"<b>{title}</b> {e(label)}".rstrip()]
    if not rows:
        lines.append("No fills yet.")
    for t in rows:
        extra = f" · {mark(t.realized)} {e(money(t.realized, 'USD', signed=True))}" if t.realized is not None else ""
        comm = f" · commission {num.usd(t.commission)}" if t.commission is not None else ""
        lines.append(f"{e(ny(t.time))} <b>{e(t.side)}</b> {t.qty} {e(t.what)} @ <code>{t.price:.2f}</code>"
                     f"{e(comm)} ({e(t.purpose)}){extra}")
    return "\n".join(lines)


def pnl_text(v: PnlView, label: str) -> str:
    qqqm_unreal = v.qqqm_value - v.qqqm_cost if v.qqqm_value is not None else None
    win = f"{v.wins}/{v.closed_lots} lots won" if v.closed_lots else "no closed lot yet"
    lines = [
        f"<b>P&amp;L</b> {e(label)}".rstrip(),
        f"Realized (options, net of commissions): {mark(v.realized_options)} "
        f"<code>{e(money(v.realized_options, 'USD', signed=True))}</code> ({e(win)})",
        f"Unrealized (open lots at mid): {mark(v.unrealized_options)} "
        f"<code>{e(money(v.unrealized_options, 'USD', signed=True))}</code>",
        f"QQQM core: {mark(qqqm_unreal)} <code>{e(money(qqqm_unreal, 'USD', signed=True))}</code>",
        f"Recycling pool: {e(num.pool_text(v.pool, v.threshold))}",
    ]
    lines += notes_lines(v.notes)
    return "\n".join(lines)


def check_text(report: TickReport, label: str, market_open: bool = True) -> str:
    head = f"<b>Check</b> {e(label)} (nothing was sent)".replace("  ", " ")
    lines = [head]
    if not market_open and report.session is not None and not report.skipped:
        lines.append(f"<i>The market is closed: this is the first tick of {report.session:%a %Y-%m-%d} "
                     f"({e(ny(report.time))}) if prices stayed where they are now, QQQ's last price as its "
                     "previous close.</i>")
    lines.append(e(num.restyle(report.summary() or "no action")))
    if report.reasons:
        lines += ["", "<b>Why</b>"] + [f"• {e(num.restyle(r.text))}" for r in report.reasons]
    return "\n".join(lines)


def journal_text(j: DayJournal, label: str) -> str:
    lines = [f"<b>Decisions of {j.day:%a %Y-%m-%d}</b> {e(label)}".rstrip()]
    if not j.lines:
        lines.append("Nothing recorded for this session yet.")
    lines += [f"{e(line.at.astimezone(NY).strftime('%H:%M'))} {e(num.restyle(line.text))}" for line in j.lines]
    lines.append("")
    lines.append("One line each time a decision or its reason changes. /why N tells lot N's story.")
    return "\n".join(lines)


def lot_story_text(story: LotStory, label: str) -> str:
    state = (f"closed {ny(story.closed_at)}, {e(story.how or '')}: realized "
             f"{mark(story.realized)} <code>{e(money(story.realized, 'USD', signed=True))}</code>"
             if story.qty_open == 0 else f"open, {story.qty_open} held")
    lines = [f"<b>Lot #{story.lot_id}</b> {e(label)}".rstrip(),
             f"{e(story.contract)} × {story.qty_opened}, average <code>{story.avg_price:.2f}</code>",
             f"opened {e(ny(story.opened_at))}; {state}", ""]
    if not story.lines:
        lines.append("No journal lines for this lot (it predates the journal).")
    lines += [f"{e(line.at.astimezone(NY).strftime('%Y-%m-%d %H:%M'))} {e(num.restyle(line.text))}"
              for line in story.lines]
    return "\n".join(lines)


_PERIOD_TITLES = {"day": "Realized P&amp;L by trading day", "week": "Realized P&amp;L by week",
                  "month": "Realized P&amp;L by month"}


def period_text(period: str, rows: Sequence[PeriodRow], label: str) -> str:
    lines = [f"<b>{_PERIOD_TITLES[period]}</b> {e(label)}".rstrip(),
             "<i>Options, net of commissions; lots that expired unsold included.</i>"
             + (" <i>Weekends and holidays only when something closed.</i>" if period == "day" else "")]
    total = sum((r.realized for r in rows), Decimal(0))
    for r in rows:
        when = {"day": f"{r.start:%a %Y-%m-%d}", "week": f"week of {r.start:%Y-%m-%d}",
                "month": f"{r.start:%B %Y}"}[period]
        counts = []
        if r.sales:
            counts.append(num.plural(r.sales, "sale"))
        if r.expiries:
            counts.append(num.plural(r.expiries, "expiry", "expiries"))
        detail = f" ({', '.join(counts)}, {r.wins} won)" if counts else " (nothing closed)"
        lines.append(f"{e(when)}: {mark(r.realized)} <code>{e(money(r.realized, 'USD', signed=True))}</code>"
                     f"{e(detail)}")
    lines.append(f"Total: {mark(total)} <code>{e(money(total, 'USD', signed=True))}</code>")
    return "\n".join(lines)


LOG_LINE_CHARS = 110  # a phone shows about this much of a line in three or four rows
_LOG_LINE = re.compile(r"(?P<time>\S+) (?P<level>[A-Z]+) (?P<name>\S+): (?P<msg>.*)", re.S)
_LEVEL_MARKS = {"WARNING": "⚠️ ", "ERROR": "❗ ", "CRITICAL": "❗ "}


def log_line(line: str) -> str:
    """One log line as a phone reads it: the time in New York, a mark for a warning or an error, the
    logger's last name, the message cut to ``LOG_LINE_CHARS``."""
    m = _LOG_LINE.fullmatch(line)
    if m is None:
        return line if len(line) <= LOG_LINE_CHARS else line[: LOG_LINE_CHARS - 1] + "…"
    try:
        at = datetime.fromisoformat(m["time"]).astimezone(NY).strftime("%H:%M:%S")
    except ValueError:
        at = m["time"]
    msg = m["msg"] if len(m["msg"]) <= LOG_LINE_CHARS else m["msg"][: LOG_LINE_CHARS - 1] + "…"
    return f"{at} {_LEVEL_MARKS.get(m['level'], '')}{m['name'].rsplit('.', 1)[-1]}: {msg}"


def logs_text(lines: Sequence[str]) -> str:
    """/logs: the last lines, short, in New York time (the full lines come as a file)."""
    if not lines:
        return "No log lines yet in this process."
    head = f"<b>Last {num.plural(len(lines), 'log line')}</b> (ET, redacted; in full in the file)"
    return "\n".join([head, *(e(log_line(line)) for line in lines)])


def version_text(versions: dict[str, str], label: str) -> str:
    return "\n".join([f"<b>Version</b> {e(label)}".rstrip(),
                      *(f"{e(name)}: <code>{e(v)}</code>" for name, v in versions.items())])


# --- settings ------------------------------------------------------------------------------------


def value_html(key: str, value: object) -> str:
    """A setting's value as typed, in code (what /set takes, so no number style applies inside),
    with its unit after it: ``<code>1.5</code> %``."""
    unit = unit_text(key, value)
    return f"<code>{e(format_value(key, value))}</code>" + (f" {e(unit)}" if unit else "")


def settings_text(s: StrategySettings, label: str) -> str:
    """Every setting by group, with its human label, value and unit."""
    lines = [f"<b>Settings</b> {e(label)}".rstrip(), f"Automatic orders: {pause_line(s.paused)}"]
    for group in GROUPS:
        lines += ["", f"<b>{e(GROUP_TITLES[group])}</b>"]
        lines += [f"{e(label_of(key))}: {value_html(key, getattr(s, key))}" for key in group_keys(group)]
    return "\n".join(lines)


def change_text(c: SettingChange) -> str:
    """ "Entry drop: 1 % → 1.5 %", the old and the new value as they are stored."""
    return f"{e(label_of(c.key))}: {value_html(c.key, c.old)} → {value_html(c.key, c.new)}"


def _lot_money(x: Exposure, lots: int = 1) -> str:
    if x.skipped:
        return "none (entries skipped)"
    if x.per_lot is None:
        return f"up to {num.usd(x.cap * lots)}"
    return f"about {num.usd(x.per_lot * lots)}"


def exposure_lines(old: Exposure, new: Exposure) -> list[str]:
    """The money a change puts at risk, old → new: a new lot, every lot held, the cap on a lot."""
    def change(a: str, b: str) -> str:
        return f"{e(a)} → <b>{e(b)}</b>" if a != b else f"{e(b)}, as now"

    lines = [f"💵 A new lot: {change(_lot_money(old), _lot_money(new))}"]
    lots = f"{new.lots} lots" if new.lots == old.lots else f"{old.lots} → {new.lots} lots"
    lines.append(f"💵 With {lots}: {change(_lot_money(old, old.lots), _lot_money(new, new.lots))}")
    if old.cap != new.cap:
        lines.append(f"💵 The most a lot may cost: {change(num.usd(old.cap), num.usd(new.cap))}")
    if new.skipped and new.uncapped is not None:
        lines.append(f"<i>A lot would cost {e(num.usd(new.uncapped))}, above Max premium "
                     f"({e(num.usd(new.cap))}): entries would be skipped.</i>")
    elif new.uncapped is not None:
        lines.append(f"<i>That size is {e(num.usd(new.uncapped))}; Max premium caps a lot at "
                     f"{e(num.usd(new.cap))}.</i>")
    if new.contract_cost is not None:
        lines.append(f"<i>At the last lot's price of one contract, {e(num.usd(new.contract_cost))}.</i>")
    return lines


def error_text(err: SettingError) -> str:
    return f"❌ {e(err.message)}\nNothing was changed."


# --- alerts --------------------------------------------------------------------------------------

ALERT_TITLES: dict[EventKind, str] = {
    EventKind.ORDER_SENT: "📤 Order sent", EventKind.ORDER_FILLED: "✅ Filled",
    EventKind.ORDER_PARTIAL: "◐ Partial fill",
    EventKind.ORDER_CANCELLED: "✖️ Cancelled", EventKind.ORDER_REJECTED: "⛔ Rejected",
    EventKind.TAKE_PROFIT: "💰 Take profit", EventKind.FORCE_EXIT: "⏱ Force exit",
    EventKind.EXPIRY_GUARD: "⏳ Expiry guard", EventKind.EXPIRED: "⌛ Expired unsold",
    EventKind.EXTERNAL_CLOSE: "🧾 Closed outside the bot",
    EventKind.EXIT_HELD: "⏸ Exit held back", EventKind.STARTED: "🚀 Started", EventKind.MANUAL: "🖐 Manual",
    EventKind.ENTRY: "🟢 Entry", EventKind.ROLL: "🔄 Roll",
    EventKind.RECYCLE: "♻️ Recycling into QQQM", EventKind.NO_CONTRACT: "🔍 No eligible contract",
    EventKind.SKIPPED: "⏭ Order skipped", EventKind.LIMIT_REACHED: "🛑 Daily limit reached",
    EventKind.DISCONNECT: "🔌 Broker disconnected", EventKind.DEGRADED: "🟡 Broker degraded",
    EventKind.RECONNECT: "🔌 Broker connected",
    EventKind.ERROR: "❗ Error", EventKind.SETTINGS_CHANGED: "⚙️ Setting changed", EventKind.PAUSED: "⏸ Paused",
    EventKind.RESUMED: "▶️ Resumed", EventKind.UNAUTHORIZED: "🚫 Unauthorized access",
    EventKind.DAILY_SUMMARY: "📊 Daily summary",
}

# How the 🔔 Alerts screen groups the event kinds; a kind missing here is shown under the last group.
ALERT_GROUPS: tuple[tuple[str, tuple[EventKind, ...]], ...] = (
    ("📤 Orders", (EventKind.ORDER_SENT, EventKind.ORDER_FILLED, EventKind.ORDER_PARTIAL, EventKind.ORDER_CANCELLED,
                  EventKind.ORDER_REJECTED, EventKind.LIMIT_REACHED)),
    ("💰 Exits", (EventKind.TAKE_PROFIT, EventKind.FORCE_EXIT, EventKind.EXPIRY_GUARD, EventKind.EXPIRED,
                 EventKind.EXTERNAL_CLOSE, EventKind.EXIT_HELD)),
    ("🟢 Strategy", (EventKind.ENTRY, EventKind.ROLL, EventKind.RECYCLE, EventKind.NO_CONTRACT, EventKind.SKIPPED)),
    ("🔌 Connection", (EventKind.DISCONNECT, EventKind.DEGRADED, EventKind.RECONNECT)),
    ("⚙️ System", (EventKind.STARTED, EventKind.ERROR, EventKind.SETTINGS_CHANGED, EventKind.PAUSED,
                  EventKind.RESUMED, EventKind.UNAUTHORIZED, EventKind.DAILY_SUMMARY)),
)


def alert_groups() -> list[tuple[str, tuple[EventKind, ...]]]:
    """The groups of the Alerts screen, every event kind in exactly one."""
    placed = {k for _, kinds in ALERT_GROUPS for k in kinds}
    rest = tuple(k for k in EventKind if k not in placed)
    groups = list(ALERT_GROUPS)
    title, kinds = groups[-1]
    groups[-1] = (title, kinds + rest)
    return groups


def alert_label(kind: EventKind | str) -> str:
    """An event kind in words, without its emoji: "Order sent", "Recycling into QQQM"."""
    try:
        title = ALERT_TITLES.get(EventKind(kind))
    except ValueError:
        title = None
    if title is None:
        return str(kind).replace("_", " ").capitalize()
    return title.partition(" ")[2]


def alert_html(event: Event, label: str) -> str:
    title = ALERT_TITLES.get(event.kind, event.kind.value)
    text = event.text if len(event.text) <= ALERT_TEXT_LIMIT else event.text[:ALERT_TEXT_LIMIT] + "…"
    head = f"{e(label)} <b>{e(title)}</b>".strip()
    return f"{head}\n{e(text)}"


# --- manual control --------------------------------------------------------------------------------


def sell_preview_text(p: SellPreview) -> str:
    lot = p.lot
    return "\n".join([
        f"<b>Sell lot #{lot.id} now?</b>",
        f"{e(lot.contract.key)} × {lot.qty}, bought at <code>{lot.avg_price:.2f}</code>",
        f"bid <code>{p.bid:.2f}</code> · ask <code>{p.ask:.2f}</code> · mid <code>{p.mid:.2f}</code>",
        f"Value at the mid: <code>{e(money(p.value))}</code>",
        f"Estimated P&amp;L: {mark(p.pnl_usd)} <code>{e(money(p.pnl_usd, signed=True))}</code> "
        f"({e(pct(p.pnl_pct))}) after commissions",
        "A limit order at the mid, repriced toward the bid until it fills or times out.",
    ])


def entry_preview_text(p: EntryPreview) -> str:
    return "\n".join([
        f"<b>Buy {p.qty} {e(p.contract)} now?</b>",
        f"delta <code>{p.delta:.2f}</code> · bid <code>{p.bid:.2f}</code> · ask <code>{p.ask:.2f}</code> · "
        f"mid <code>{p.mid:.2f}</code>",
        f"Premium at the mid: <code>{e(money(p.premium))}</code> plus commission; the limit may reprice up to "
        f"<code>{p.max_limit:.2f}</code> ({e(money(p.max_limit * p.qty * 100))})",
        f"⚠️ Already entered this session: {e(p.already)}. This buys <b>another</b> lot: "
        "tap Buy another only if you mean it." if p.another else
        "It counts as this session's entry: the strategy will not enter again today.",
    ])


def _order_line(o: WorkingOrder, quote: tuple[Decimal | None, Decimal | None] | None, now: datetime) -> list[str]:
    age = int((now - o.created_at).total_seconds())
    age_text = f"{age} s" if age < 120 else f"{age // 60} min"
    vs = ""
    if quote is not None and quote[0] is not None and quote[1] is not None:
        vs = f" (bid {quote[0]:.2f} / ask {quote[1]:.2f})"
    lines = [f"<b>#{o.id}</b> {e(o.purpose)}: {e(o.what)} × {o.qty}" + (f", {o.filled} filled" if o.filled else ""),
             f"limit <code>{o.limit:.2f}</code>{e(vs)} · working for {e(age_text)}"]
    if o.state not in ("", "working", "partially filled"):
        lines.append(f"⚠️ {e(o.state[0].upper() + o.state[1:])}")
    if o.roll_note:
        lines.append(f"<i>{e(o.roll_note)}</i>")
    return lines


def orders_text(v: OrdersView, label: str) -> str:
    lines = [f"<b>Working orders</b> {e(label)}".rstrip()]
    if not v.orders:
        lines.append("No order is working.")
    for o in v.orders:
        lines += ["", *_order_line(o, v.quotes.get(o.order_ref), v.now)]
    lines += notes_lines(v.notes)
    return "\n".join(lines)


def cancel_ask_text(orders: Sequence[WorkingOrder]) -> str:
    head = "Cancel this order?" if len(orders) == 1 else f"Cancel these {len(orders)} orders?"
    lines = [f"<b>{head}</b>"]
    for o in orders:
        lines.append(f"#{o.id} {e(o.purpose)}: {e(o.what)} × {o.qty} at <code>{o.limit:.2f}</code>")
        if o.roll_note:
            lines.append(f"<i>{e(o.roll_note)}</i>")
    return "\n".join(lines)


def sell_all_ask_text(v: PositionsView) -> str:
    lines = [f"<b>Sell {'the lot' if len(v.lots) == 1 else f'all {len(v.lots)} lots'} now?</b>"]
    for lot in v.lots:
        lines.append(f"#{lot.id} {e(lot.contract)} × {lot.qty}: mid {e(money(lot.mid, ''))}, "
                     f"{e(money(lot.pnl_usd, 'USD', signed=True))}")
    lines.append("Each is a limit order at the mid, repriced toward the bid.")
    return "\n".join(lines)


# --- /backtest ---------------------------------------------------------------------------------------


def _pct_cell(x: float) -> str:
    return num.percent(Decimal(str(x * 100)), 1)


def covered_span(start: str, end: str, years: int) -> tuple[str, bool]:
    """What a backtest really covered ("13 months", "9.8 years") and whether it is short of the
    years asked."""
    try:
        days = (date.fromisoformat(end) - date.fromisoformat(start)).days
    except ValueError:
        return f"{years} y", False
    months = round(days / 30.44)
    text = num.plural(months, "month") if months < 24 else f"{days / 365.25:.1f} years"
    return text, days / 365.25 < years - 0.25


def comparison_text(v: ComparisonView, label: str) -> str:
    """A short table, monospaced so its columns line up on a phone: one column per strategy."""
    curves = v.curves
    names = ["now", "change"][: len(curves)]
    rows: list[tuple[str, list[str]]] = [
        ("CAGR", [_pct_cell(c.summary["cagr"]) for c in curves]),
        ("Max drawdown", [num.percent(Decimal(str(c.summary['max_drawdown_pct'])), 1, sign=False)
                          for c in curves]),
        ("Sharpe", [f"{c.summary['sharpe']:.2f}" for c in curves]),
        ("Entries", [str(c.summary["entries"]) for c in curves]),
        ("Realized", [f"{float(c.summary['realized_pnl']):,.0f}" for c in curves]),
        ("QQQM bought", [f"{float(c.summary['qqqm_deployed']):,.0f}" for c in curves]),
        ("Final equity", [f"{float(c.summary['final_equity']):,.0f}" for c in curves]),
    ]
    width = max(10, *(len(cell) for _, cells in rows for cell in cells))
    table = [f"{'':<13}" + "".join(f"{n:>{width + 1}}" for n in names)]
    table += [f"{name:<13}" + "".join(f"{cell:>{width + 1}}" for cell in cells) for name, cells in rows]
    bh = curves[0].summary["buy_hold"]
    covered, short = covered_span(v.start, v.end, v.years)
    asked = f" (you asked for {num.plural(v.years, 'year')}: that is all the history there is)" if short else ""
    lines = [f"<b>Backtest</b> {e(label)}".rstrip(),
             f"{e(v.start)} → {e(v.end)}: {e(covered)} of {e(v.source)}{e(asked)}, {e(money(v.capital))} to start"]
    if len(curves) > 1:
        lines.append(f"now = current settings; change = {e(curves[1].label)}")
    lines += [f"<pre>{e(chr(10).join(table))}</pre>",
              f"QQQ buy &amp; hold: CAGR {e(_pct_cell(bh['cagr']))}, max drawdown "
              f"{e(num.percent(Decimal(str(bh['max_drawdown_pct'])), 1, sign=False))}, "
              f"final {e(money(Decimal(bh['final_equity'])))}",
              "<i>USD figures; the past, on model option prices: not a promise.</i>"]
    lines += notes_lines(n for n in v.notes if not (short and "years of QQQ history" in n))  # said up front
    return "\n".join(lines)

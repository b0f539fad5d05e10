"""/settings and /set as a phone user meets them, through the real Application (respx at the Bot
API): the menu of groups with human labels, the Alerts groups, buttons that die with their message,
the product's own refusals, and the property that what a reply says was stored is what was stored."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bot.engine.alerts import EventKind
from storage import outbox, settings_store
from storage.models import SettingChange
from strategy.settings import (
    GROUP_TITLES,
    GROUPS,
    SETTING_SPECS,
    display_value,
    format_value,
    group_keys,
    parse_setting,
    resolve_key,
)
from strategy.settings import (
    SettingChange as Change,
)
from tests.tg_harness import ADMIN, Call, Tg, open_tg

SNAKE = re.compile(r"\b[a-z]+_[a-z_]+\b")


@pytest.fixture
async def tg(tmp_path: Path) -> AsyncIterator[Tg]:
    async for t in open_tg(tmp_path):
        yield t


def buttons_of(call: Call) -> list[tuple[str, str]]:
    return [(b["text"], b["callback_data"]) for row in call.keyboard for b in row]


def answers(tg: Tg) -> list[str]:
    return [str(c.params.get("text", "")) for c in tg.api.of("answerCallbackQuery")]


async def navigate(tg: Tg, *labels: str) -> Call:
    """/settings, then a tap on the button starting with each label in turn; the screen reached."""
    await tg.send(ADMIN, "/settings")
    for label in labels:
        await tg.tap(ADMIN, tg.api.last(ADMIN).button(label))
    return tg.api.last(ADMIN)


async def open_setting(tg: Tg, key: str) -> Call:
    """/settings → the setting's group → the setting's screen."""
    spec = SETTING_SPECS[key]
    if spec.group in GROUPS:
        return await navigate(tg, f"{_icon(spec.group)} {GROUP_TITLES[spec.group]}", f"{spec.label}: ")
    return await navigate(tg, "⏸ Pause")


def _icon(group: str) -> str:
    return {"entry": "📈", "exits": "🎯", "roll": "🔄", "recycling": "♻️", "orders": "🧾"}[group]


# --- the menu -----------------------------------------------------------------------------------------


async def test_settings_is_a_short_menu_of_groups_with_human_labels(tg: Tg) -> None:
    await tg.send(ADMIN, "/settings")
    menu = tg.api.last(ADMIN)
    texts = [t for t, _ in buttons_of(menu)]
    assert texts == ["📈 Entry", "🎯 Exits", "🔄 Roll", "♻️ Recycling", "🧾 Orders", "🔔 Alerts", "⏸ Pause: off",
                     "✖ Close"]
    assert len(menu.keyboard) <= 4  # two buttons a row
    # the groups only: each group's screen shows its values (a phone need not scroll past 24 of them)
    assert menu.text == ("<b>Settings</b> [SIM]\nAutomatic orders: ▶️ running\n"
                         "Tap a group to see its settings and change one.")
    assert not SNAKE.search(re.sub(r"<[^>]+>", "", menu.text)), menu.text


@pytest.mark.parametrize("group", GROUPS)
async def test_each_group_shows_its_settings_with_label_value_and_unit(tg: Tg, group: str) -> None:
    screen = await navigate(tg, f"{_icon(group)} {GROUP_TITLES[group]}")
    texts = [t for t, _ in buttons_of(screen)]
    s = tg.parts.engine.settings.current
    assert texts[:-1] == [f"{SETTING_SPECS[k].label}: {display_value(k, getattr(s, k))}" for k in group_keys(group)]
    assert texts[-1] == "« Settings"
    assert len(texts) - 1 <= 9
    assert not any(SNAKE.search(t) for t in texts)


async def test_a_setting_screen_says_what_it_does_its_range_and_how_to_set_it(tg: Tg) -> None:
    screen = await open_setting(tg, "order_timeout_s")
    assert "<b>Order timeout</b>: an order still unfilled after this is cancelled." in screen.text
    assert "Now: <code>120</code> s" in screen.text and "Valid: 16–3600 s, above Reprice after (15 s)" in screen.text
    assert "/set timeout VALUE" in screen.text
    assert [t for t, _ in buttons_of(screen)] == ["60 s", "300 s", "✏️ Type a value", "« Orders"]


async def test_the_pause_mode_from_the_menu(tg: Tg) -> None:
    await tg.enroll_and_login()
    screen = await open_setting(tg, "paused")
    assert [t for t, _ in buttons_of(screen)][:2] == ["⏸ Entries only", "⏸ Everything"]
    await tg.tap(ADMIN, screen.button("⏸ Entries only"))
    assert "Pause: <code>off</code> → <code>entries</code>" in tg.api.last(ADMIN).text
    await tg.tap(ADMIN, tg.api.last(ADMIN).button("✅ Confirm"))
    assert str(tg.parts.engine.settings.current.paused) == "entries"
    await tg.tap(ADMIN, tg.api.last(ADMIN).button("« Settings"))
    assert "⏸ Pause: entries" in [t for t, _ in buttons_of(tg.api.last(ADMIN))]


# --- buttons that die with their message ------------------------------------------------------------


async def test_after_close_every_button_of_the_message_has_expired(tg: Tg) -> None:
    await tg.enroll_and_login()
    await tg.send(ADMIN, "/settings")
    menu = buttons_of(tg.api.last(ADMIN))
    await tg.tap(ADMIN, dict(menu)["✖ Close"])
    assert tg.api.last(ADMIN).text.startswith("Settings closed.") and tg.api.last(ADMIN).keyboard == []
    tg.api.clear()
    for _, data in menu:
        await tg.tap(ADMIN, data)
    assert answers(tg) == ["This button has expired; send /settings again."] * len(menu)
    assert tg.api.of("editMessageText") == []  # nothing redrawn, nothing changed


async def test_a_screen_left_behind_is_stale(tg: Tg) -> None:
    """A tap redraws the message: the buttons it showed before (a lagging phone, a double tap) die."""
    await tg.send(ADMIN, "/settings")
    menu = tg.api.last(ADMIN)
    await tg.tap(ADMIN, menu.button("🎯 Exits"))
    tg.api.clear()
    await tg.tap(ADMIN, menu.button("📈 Entry"))
    assert answers(tg) == ["This button has expired; send /settings again."]
    # another /settings message is not affected
    await tg.send(ADMIN, "/settings")
    await tg.tap(ADMIN, tg.api.last(ADMIN).button("📈 Entry"))
    assert tg.api.last(ADMIN).method == "editMessageText"


async def test_a_completed_confirm_leaves_no_live_button_and_applies_once(tg: Tg) -> None:
    await tg.enroll_and_login()
    screen = await open_setting(tg, "max_positions")
    await tg.tap(ADMIN, screen.button("4 lots"))
    confirm = tg.api.last(ADMIN)
    assert "Max lots: <code>3</code> lots → <code>4</code> lots" in confirm.text
    old_buttons = buttons_of(confirm)
    await tg.tap(ADMIN, confirm.button("✅ Confirm"))
    saved = tg.api.last(ADMIN)
    assert saved.text.startswith("✅ Saved: Max lots: <code>3</code> lots → <code>4</code> lots")
    tg.api.clear()
    for _, data in old_buttons:  # Confirm again (a double tap), Cancel
        await tg.tap(ADMIN, data)
    assert answers(tg) == ["This button has expired; send /settings again."] * len(old_buttons)
    assert SettingChange.select().where(SettingChange.key == "max_positions").count() == 1
    await tg.tap(ADMIN, saved.button("« Entry"))  # the saved screen's own way back: its group, with the value
    assert "Max lots: 4 lots" in [t for t, _ in buttons_of(tg.api.last(ADMIN))]


async def test_a_confirm_without_a_session_is_refused_and_still_works_after_login(tg: Tg) -> None:
    secret = await tg.enroll_and_login()
    await tg.send(ADMIN, "/logout")
    screen = await open_setting(tg, "entry_drop_pct")
    await tg.tap(ADMIN, screen.button("2 %"))
    confirm = tg.api.last(ADMIN).button("✅ Confirm")
    await tg.tap(ADMIN, confirm)
    assert "open a session first" in answers(tg)[-1]
    assert tg.parts.engine.settings.current.entry_drop_pct == 1
    tg.clock.advance_to(tg.clock.now() + timedelta(seconds=31))  # a fresh TOTP code
    await tg.send(ADMIN, f"/login {tg.code(secret)}")
    await tg.tap(ADMIN, confirm)
    assert "✅ Saved: Entry drop" in tg.api.last(ADMIN).text
    assert tg.parts.engine.settings.current.entry_drop_pct == 2


async def test_typing_ends_with_back_and_after_five_minutes(tg: Tg) -> None:
    await tg.enroll_and_login()
    screen = await open_setting(tg, "target_delta")
    await tg.tap(ADMIN, screen.button("✏️ Type a value"))
    prompt = tg.api.last(ADMIN)
    assert "e.g. <code>0.5 or 0,5</code>" in prompt.text
    await tg.tap(ADMIN, prompt.button("« Back"))
    await tg.send(ADMIN, "0.7")
    assert tg.api.last(ADMIN).text == "Send a command; /help lists them."

    again = await open_setting(tg, "target_delta")
    await tg.tap(ADMIN, again.button("✏️ Type a value"))
    tg.clock.advance_to(tg.clock.now() + timedelta(minutes=6))
    await tg.send(ADMIN, "0.7")
    assert "more than 5 minutes" in tg.api.last(ADMIN).text
    await tg.send(ADMIN, "0.7")
    assert tg.api.last(ADMIN).text == "Send a command; /help lists them."
    assert tg.parts.engine.settings.current.target_delta == Decimal("0.6")


async def test_a_typed_value_equal_to_the_current_one_offers_no_confirm(tg: Tg) -> None:
    screen = await open_setting(tg, "target_delta")
    await tg.tap(ADMIN, screen.button("✏️ Type a value"))
    await tg.send(ADMIN, "0,60")
    reply = tg.api.last(ADMIN)
    assert reply.text.startswith("No change: Delta of the call to buy")
    assert [t for t, _ in buttons_of(reply)] == ["« Back"]


# --- /set in the product's words ------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "reply"), [
    ("/set entry_drop 0,5", "✅ Entry drop: <code>1</code> % → <code>0.5</code> %"),
    # the ones that raise the money at risk ask to confirm first (tests/test_phone.py)
    ("/set delta 0,65", "Change Delta of the call to buy: <code>0.6</code> → <code>0.65</code>?"),
    ("/set qty 2", "Change Position size: <code>1</code> contract → <code>2</code> contracts?"),
    ("/set size 10%", "Change Position size: <code>1</code> contract → <code>10%</code> of net liquidation?"),
])
async def test_set_replies_with_the_label_and_units(tg: Tg, text: str, reply: str) -> None:
    await tg.enroll_and_login()
    await tg.send(ADMIN, text)
    assert tg.api.last(ADMIN).text.startswith(reply)


@pytest.mark.parametrize(("text", "reply"), [
    ("/set premium 12.000", "❌ '12.000' is ambiguous: 12000 or 12? Type 12000 or 12, without a thousands separator. "
                            "Max premium per entry must be 100–1,000,000 USD.\nNothing was changed."),
    ("/set delta ⁰.⁶", "❌ '⁰.⁶' is not a number: type it with the digits 0–9. Delta of the call to buy must be "
                       "0.05–0.95.\nNothing was changed."),
    ("/set reprice 200", "❌ Reprice after = 200 s refused: it must be below Order timeout (120 s), so 1–119 s. "
                         "To go higher, raise Order timeout first.\nNothing was changed."),
    ("/set entry_drop 0.05", "❌ Entry drop = 0.05 % refused: it must be 0.1–20 %.\nNothing was changed."),
    ("/set drop 1,234.5", "❌ Entry drop = 1234.5 % refused: it must be 0.1–20 %.\nNothing was changed."),
])
async def test_set_refusals_are_worded_for_the_user_and_store_nothing(tg: Tg, text: str, reply: str) -> None:
    await tg.enroll_and_login()
    await tg.send(ADMIN, text)
    assert html.unescape(tg.api.last(ADMIN).text) == reply
    assert settings_store.load_raw() == {} and SettingChange.select().count() == 0


# --- the Alerts screen ------------------------------------------------------------------------------------


async def test_alerts_are_grouped_with_human_labels(tg: Tg) -> None:
    screen = await navigate(tg, "🔔 Alerts")
    groups = [t for t, _ in buttons_of(screen)]
    assert groups == ["📤 Orders: all on", "💰 Exits: all on", "🟢 Strategy: all on", "🔌 Connection: all on",
                      "⚙️ System: all on", "« Settings"]
    labels: list[str] = []
    for title in groups[:-1]:
        await tg.tap(ADMIN, screen.button(title))
        group = tg.api.last(ADMIN)
        labels += [t for t, _ in buttons_of(group)][:-1]
        await tg.tap(ADMIN, group.button("« Alerts"))
        screen = tg.api.last(ADMIN)
    assert len(labels) == len(EventKind) and len(set(labels)) == len(labels)  # every kind, once
    assert "🔔 Exit held back" in labels and "🔔 Started" in labels and "🔔 Recycling into QQQM" in labels
    assert not any(SNAKE.search(t) for t in labels)


async def test_an_alert_level_from_its_group_is_audited_and_shown(tg: Tg) -> None:
    await tg.enroll_and_login()
    kind = await navigate(tg, "🔔 Alerts", "💰 Exits", "🔔 Exit held back")
    assert kind.text == "<b>Exit held back</b> alerts are on (with sound)."
    assert [t for t, _ in buttons_of(kind)] == ["🔕 Silent", "🚫 Off", "« 💰 Exits"]
    await tg.tap(ADMIN, kind.button("🔕 Silent"))
    assert outbox.alert_level("exit_held") == "silent"
    assert "🔕 Exit held back" in [t for t, _ in buttons_of(tg.api.last(ADMIN))]
    change = SettingChange.get(SettingChange.key == "alert.exit_held")
    assert (change.old_value, change.new_value) == ("on", "silent") and change.who.startswith(f"telegram:{ADMIN}")
    await tg.tap(ADMIN, tg.api.last(ADMIN).button("« Alerts"))
    assert "💰 Exits: 🔔5 🔕1" in [t for t, _ in buttons_of(tg.api.last(ADMIN))]


async def test_an_alert_level_needs_a_session(tg: Tg) -> None:
    await navigate(tg, "🔔 Alerts", "⚙️ System", "🔔 Error", "🚫 Off")
    assert "open a session first" in answers(tg)[-1]
    assert outbox.alert_level("error") == "on"


# --- what a reply says was stored is what was stored ------------------------------------------------------

KEY_TEXTS = sorted({*SETTING_SPECS, *(a for s in SETTING_SPECS.values() for a in s.aliases)})
any_values = st.one_of(
    st.from_regex(r"[-+]?[0-9]{0,5}([.,_][0-9]{0,4}){0,2} ?(%|usd|\$|days|d|s|min|lots)?", fullmatch=True),
    st.text(alphabet="0123456789,._-%$ :dayson", min_size=1, max_size=14),
)


@st.composite
def set_inputs(draw: st.DrawFn) -> tuple[str, str]:
    """A key (or alias) and a value: often one of its presets, as typed with a point or a comma,
    sometimes with a digit more or less, else anything number-like."""
    key_text = draw(st.sampled_from(KEY_TEXTS))
    spec = SETTING_SPECS[resolve_key(key_text) or ""]
    preset = st.sampled_from(spec.presets)
    near = st.one_of(preset, preset.map(lambda p: p.replace(".", ",")),
                     st.tuples(preset, st.sampled_from(["0", "5", "25", "000"])).map("".join))
    return key_text, draw(st.one_of(near, any_values))


CHANGE = re.compile(r"(?:✅ (?:Saved: )?|No change: )(?P<label>[^:<]+(?::[^:<]+)?): <code>(?P<old>[^<]*)</code>[^→]* → "
                    r"<code>(?P<new>[^<]*)</code>")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(typed=set_inputs())
async def test_no_input_stores_a_value_other_than_the_replys_old_to_new(tg: Tg, typed: tuple[str, str]) -> None:
    key_text, value = typed
    if not tg.parts.deps.extra.get("logged_in"):
        await tg.enroll_and_login()
        tg.parts.deps.extra["logged_in"] = True
    key = resolve_key(key_text)
    assert key is not None
    before = tg.parts.engine.settings.current
    stored_before = settings_store.load_raw()
    changes_before = SettingChange.select().count()
    await tg.send(ADMIN, f"/set {key_text} {value}")
    reply = tg.api.last(ADMIN).text
    if reply.startswith("Change "):  # it raises the money at risk: asked first, stored on Confirm
        event("confirmed")
        assert settings_store.load_raw() == stored_before and tg.parts.engine.settings.current == before
        await tg.tap(ADMIN, tg.api.last(ADMIN).button("✅ Confirm"))
        reply = tg.api.last(ADMIN).text
    m = CHANGE.match(reply)
    if m is None:  # refused (or usage): nothing stored, and the reply says so
        event("refused")
        assert reply.startswith(("❌", "❓", "Usage")), reply  # ❓: a slip answered with the command to send
        assert "Nothing was changed." in reply or reply.startswith("Usage")
        assert settings_store.load_raw() == stored_before and SettingChange.select().count() == changes_before
        assert tg.parts.engine.settings.current == before
        return
    old, new = html.unescape(m["old"]), html.unescape(m["new"])
    assert m["label"] == SETTING_SPECS[key].label
    assert old == format_value(key, getattr(before, key))
    now = tg.parts.engine.settings.current
    if reply.startswith("No change"):
        event("no change")
        assert old == new and now == before and SettingChange.select().count() == changes_before
        return
    event("stored" + (" (a comma typed)" if "," in value and key != "tp_tiers" else ""))
    assert settings_store.load_raw()[key] == new  # stored exactly what the reply says
    assert format_value(key, getattr(now, key)) == new
    last = SettingChange.select().order_by(SettingChange.id.desc()).get()
    assert (last.key, last.old_value, last.new_value) == (key, old, new)
    # and what the reply shows, typed back, means the same value
    again = parse_setting(before, key, new)
    assert isinstance(again, Change) and again.new == getattr(now, key)


CONFIRM = re.compile(r"Change (?P<label>[^<]+): <code>(?P<old>[^<]*)</code>[^→]* → <code>(?P<new>[^<]*)</code>")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(typed=set_inputs())
async def test_a_typed_value_stores_what_the_confirm_screen_said(tg: Tg, typed: tuple[str, str]) -> None:
    if not tg.parts.deps.extra.get("logged_in"):
        await tg.enroll_and_login()
        tg.parts.deps.extra["logged_in"] = True
    key = resolve_key(typed[0])
    assert key is not None
    before, stored_before = tg.parts.engine.settings.current, settings_store.load_raw()
    await tg.tap(ADMIN, (await open_setting(tg, key)).button("✏️ Type a value"))
    await tg.send(ADMIN, typed[1])
    offer = tg.api.last(ADMIN)
    m = CONFIRM.match(offer.text)
    if m is None:
        event("refused or no change")
        assert offer.text.startswith(("❌", "No change")), offer.text
        assert settings_store.load_raw() == stored_before and tg.parts.engine.settings.current == before
        return
    event("confirmed")
    old, new = html.unescape(m["old"]), html.unescape(m["new"])
    assert m["label"] == SETTING_SPECS[key].label and old == format_value(key, getattr(before, key))
    await tg.tap(ADMIN, offer.button("✅ Confirm"))
    asked = offer.text.split("\n")[0]  # then the money it puts at risk, when it raises it
    assert tg.api.last(ADMIN).text.startswith(f"✅ Saved: {asked.removeprefix('Change ').removesuffix('?')}")
    assert settings_store.load_raw()[key] == new
    assert format_value(key, getattr(tg.parts.engine.settings.current, key)) == new

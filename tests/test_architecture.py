"""The layering a newcomer relies on, checked on the source: the functional core imports no shell,
no bot module imports the Telegram layer, and no cycle runs through bot/ or between bot/ and
handlers/ (the composition root is `handlers/app.py`)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bot", "strategy", "storage", "handlers", "broker")


def _imports() -> dict[str, set[str]]:
    """module → the project modules it imports (anywhere in the file, lazy imports included)."""
    graph: dict[str, set[str]] = {}
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
               for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            deps: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text())):
                targets: list[str] = []
                if isinstance(node, ast.Import):
                    targets = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                for t in targets:
                    if t in modules and t != name:
                        deps.add(t)
            graph[name] = deps
    return graph


def _cycle(graph: dict[str, set[str]], keep: set[str]) -> list[str] | None:
    """A cycle among the modules in ``keep``, if there is one."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if d not in keep:
                continue
            if state.get(d) == 1:
                return [*stack[stack.index(d):], d]
            if d not in state and (found := visit(d)) is not None:
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(keep):
        if m not in state and (found := visit(m)) is not None:
            return found
    return None


def test_the_core_imports_no_shell() -> None:
    graph = _imports()
    for module, deps in graph.items():
        if module.startswith("strategy"):
            assert all(d.startswith("strategy") for d in deps), (module, deps)


def test_no_bot_module_imports_the_telegram_layer() -> None:
    graph = _imports()
    offenders = {m: {d for d in deps if d.startswith("handlers")} for m, deps in graph.items() if m.startswith("bot")}
    assert not any(offenders.values()), offenders


def test_no_import_cycle_in_bot_or_between_bot_and_handlers() -> None:
    graph = _imports()
    keep = {m for m in graph if m.startswith(("bot", "handlers"))}
    assert _cycle(graph, keep) is None, _cycle(graph, keep)


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"bot.a": {"bot.b"}, "bot.b": {"handlers.c"}, "handlers.c": {"bot.a"}}
    assert _cycle(graph, set(graph)) == ["bot.a", "bot.b", "handlers.c", "bot.a"]


# --- the shell's rooms (issue 18): app → control → lab → engine → strategy/storage/broker --------------

SHELL_LAYERS = ("bot.app", "bot.control", "bot.lab", "bot.engine")  # each imports only the ones after it
# Known exceptions, each a debt written down rather than hidden: the ledger reads the broker's own
# execution and order types; the handlers' context types its clock with the broker's Clock.
ALLOWED = {("storage.ledger", "broker.base"), ("handlers.context", "broker.clock")}


def _room(module: str) -> int | None:
    for i, layer in enumerate(SHELL_LAYERS):
        if module == layer or module.startswith(layer + "."):
            return i
    return None


def test_the_shell_rooms_depend_one_way() -> None:
    graph = _imports()
    wrong = []
    for module, deps in graph.items():
        here = _room(module)
        if here is None:
            continue
        for d in deps:
            there = _room(d)
            if there is not None and there < here:
                wrong.append((module, d))
    assert not wrong, wrong


def test_every_bot_module_lives_in_a_room() -> None:
    graph = _imports()
    loose = [m for m in graph if m.startswith("bot.") and _room(m) is None and m not in ("bot.logs",)]
    assert not loose, loose


def test_the_engine_and_the_lab_know_nothing_of_the_chat_or_the_app() -> None:
    graph = _imports()
    for module, deps in graph.items():
        if _room(module) in (2, 3):
            assert not {d for d in deps if d.startswith(("handlers", "bot.app", "bot.control"))}, (module, deps)


def test_storage_and_broker_import_no_shell_and_each_other_only_as_allowed() -> None:
    graph = _imports()
    for module, deps in graph.items():
        if module.startswith(("storage", "broker")):
            assert not {d for d in deps if d.startswith(("bot", "handlers"))}, (module, deps)
        if module.startswith("storage"):
            bad = {d for d in deps if d.startswith("broker") and (module, d) not in ALLOWED}
            assert not bad, (module, bad)
        if module.startswith("broker"):
            assert not {d for d in deps if d.startswith("storage")}, (module, deps)


def test_handlers_reach_the_broker_only_through_the_composition_root() -> None:
    graph = _imports()
    for module, deps in graph.items():
        if module.startswith("handlers") and module != "handlers.app":
            bad = {d for d in deps if d.startswith("broker") and (module, d) not in ALLOWED}
            assert not bad, (module, bad)

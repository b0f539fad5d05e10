"""Hot read queries, compiled to SQL once per kind of database.

peewee compiles a query to SQL at every execution. For the small reads the engine makes at every
tick and every order that is most of their cost (about 0.1 ms each, against a few microseconds in
SQLite), and it dominates a fast-forwarded backtest. ``rows`` and the others compile the query
that ``build`` returns the first time ``name`` is used on a kind of database, check that its
parameters are exactly ``params`` (same values, same types), and then run that SQL with each
call's ``params``. Model rows are made by peewee's own cursor wrapper, as ``Model.raw`` makes them:
every column is converted by its field exactly as the query itself would do.

A query qualifies when its shape is fixed and only its parameter values change between calls:
``build`` must place ``params`` in the query in the order given, as database values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from peewee import Model, ModelObjectCursorWrapper, Query, SqliteDatabase

from storage.models import database_proxy

M = TypeVar("M", bound=Model)

_SQL: dict[tuple[str, type], str] = {}


def sql_for(name: str, build: Callable[[], Query], params: Sequence[Any]) -> str:
    """The SQL of ``build()`` for the current database, compiled once per name and kind of database."""
    key = (name, type(database_proxy.obj))
    sql = _SQL.get(key)
    if sql is None:
        sql, compiled = build().sql()
        same = len(compiled) == len(params) and all(
            type(c) is type(p) and c == p for c, p in zip(compiled, params, strict=True))
        if not same:
            raise ValueError(f"prepared query {name}: the query's parameters {compiled!r} are not {list(params)!r}")
        _SQL[key] = sql
    return sql


_COLUMNS: dict[tuple[type, str], dict[str, Any]] = {}
# What peewee's model row wrappers work out in ``initialize`` from the result's columns (peewee 3.x):
# a prepared query's SQL fixes its columns, so the answer is kept per query.
_INIT_STATE = ("columns", "fields", "converters", "no_convert", "convert", "ncols", "unique_columns")


class _Wrapper(ModelObjectCursorWrapper):
    """peewee's own row wrapper, resolving a query's columns once per query rather than per run."""

    def __init__(self, cursor: Any, model: type[Model], key: tuple[type, str]) -> None:
        super().__init__(cursor, model, [], model)
        self._key = key

    def initialize(self) -> None:
        state = _COLUMNS.get(self._key)
        if state is None:
            super().initialize()
            _COLUMNS[self._key] = {name: getattr(self, name) for name in _INIT_STATE if hasattr(self, name)}
            return
        for name, value in state.items():
            setattr(self, name, value)


def rows(model: type[M], name: str, build: Callable[[], Query], params: Sequence[Any]) -> list[M]:
    """The model rows of ``build()`` run with ``params``, made as ``model.raw`` makes them."""
    sql = sql_for(name, build, params)
    cursor = database_proxy.execute_sql(sql, list(params))
    return list(_Wrapper(cursor, model, (model, sql)))


def first(model: type[M], name: str, build: Callable[[], Query], params: Sequence[Any]) -> M | None:
    """The first model row of ``build()`` run with ``params``, or None."""
    found = rows(model, name, build, params)
    return found[0] if found else None


def execute(name: str, build: Callable[[], Query], params: Sequence[Any]) -> int:
    """Run a write (UPDATE or DELETE) built by ``build`` with ``params``: the rows it changed.
    ``params`` are the database values (``field.db_value(v)``), as the query would send them."""
    cursor = database_proxy.execute_sql(sql_for(name, build, params), list(params))
    return int(cursor.rowcount)


def create(model: type[M], name: str, **values: Any) -> M:
    """``model.create(**values)``: the same INSERT (every field the new instance has, defaults
    included, in the model's order), compiled once per name and set of fields, and the same
    instance back, its id set and nothing dirty. Other databases than SQLite take peewee's path."""
    inst = model(**values)
    if not isinstance(database_proxy.obj, SqliteDatabase):
        inst.save(force_insert=True)
        return inst
    meta: Any = model._meta
    pk = meta.primary_key
    data = dict(inst.__data__)
    if data.get(pk.name) is None:
        data.pop(pk.name, None)
    fields = [f for f in meta.sorted_fields if f.name in data]
    params = [f.db_value(data[f.name]) for f in fields]
    key = f"{name}({','.join(f.name for f in fields)})"
    cursor = database_proxy.execute_sql(
        sql_for(key, lambda: model.insert(**{f.name: data[f.name] for f in fields}), params), params)
    if pk.name not in data:
        setattr(inst, pk.name, cursor.lastrowid)
    row: Any = inst
    row._dirty.clear()  # as Model.save leaves it: nothing dirty
    return inst


def save(inst: Model, name: str) -> None:
    """``inst.save()`` of a row read or created before: the same UPDATE of every field by its
    primary key, compiled once per name and set of fields. Other databases take peewee's path."""
    if not isinstance(database_proxy.obj, SqliteDatabase):
        inst.save()
        return
    model: Any = type(inst)
    pk = model._meta.primary_key
    data = dict(inst.__data__)
    pk_value = data.pop(pk.name)
    fields = [f for f in model._meta.sorted_fields if f.name in data]
    params = [f.db_value(data[f.name]) for f in fields] + [pk.db_value(pk_value)]
    key = f"{name}({','.join(f.name for f in fields)})"
    database_proxy.execute_sql(sql_for(key, lambda: model.update(
        **{f.name: data[f.name] for f in fields}).where(pk == pk_value), params), params)
    row: Any = inst
    row._dirty.clear()


def values(name: str, build: Callable[[], Query], params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """The raw database values of ``build()`` (no field conversion), as tuples."""
    return list(database_proxy.execute_sql(sql_for(name, build, params), list(params)).fetchall())

"""Compact column types of the state store (revision 0009): dates as day numbers and short words as small
integer codes. SQLAlchemy converts both ways, so Core queries keep comparing with, and reading, ``date`` and
``str`` values; raw reads (connector.store.frames) map the codes with :func:`decode_frame`."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import polars as pl
import sqlalchemy as sa

EPOCH = date(1970, 1, 1)


def day_number(value: date) -> int:
    """Days since 1970-01-01 (SQLite keeps 2 bytes instead of a 10-character text)."""
    return (value - EPOCH).days


class Day(sa.types.TypeDecorator):
    """A date stored as its day number (:func:`day_number`)."""

    impl = sa.Integer
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> int | None:
        if value is None or isinstance(value, int):
            return value
        if isinstance(value, str):
            value = date.fromisoformat(value[:10])
        return day_number(value)

    def process_literal_param(self, value: Any, dialect: Any) -> str:
        return str(self.process_bind_param(value, dialect))

    def process_result_value(self, value: Any, dialect: Any) -> date | None:
        return None if value is None else EPOCH + timedelta(days=int(value))


class Coded(sa.types.TypeDecorator):
    """One of a few words stored as its small integer code (SQLite stores codes 0 and 1 in no bytes at all).
    A word outside ``words`` is refused, never stored as something else."""

    impl = sa.SmallInteger
    cache_ok = True

    def __init__(self, words: tuple[str, ...]):
        super().__init__()
        self.words = tuple(words)  # a named argument: SQLAlchemy's statement cache keys on it

    def code(self, word: str) -> int:
        try:
            return self.words.index(word)
        except ValueError:
            raise ValueError(f"{word!r} is not one of {', '.join(self.words)}") from None

    def process_bind_param(self, value: Any, dialect: Any) -> int | None:
        return None if value is None else self.code(value)

    def process_literal_param(self, value: Any, dialect: Any) -> str:
        return str(self.code(value))

    def process_result_value(self, value: Any, dialect: Any) -> str | None:
        return None if value is None else self.words[int(value)]


def decode_frame(frame: pl.DataFrame, columns: dict[str, Any]) -> pl.DataFrame:
    """Turn the raw codes of a frame read without SQLAlchemy's type processing back into words and dates;
    ``columns`` maps frame column names to their SQLAlchemy types."""
    out = []
    for name, type_ in columns.items():
        if isinstance(type_, Coded):
            mapping = {i: w for i, w in enumerate(type_.words)}
            out.append(pl.col(name).cast(pl.Int64).replace_strict(mapping, default=None, return_dtype=pl.String))
        elif isinstance(type_, Day):
            out.append((pl.lit(EPOCH) + pl.duration(days=pl.col(name).cast(pl.Int64))).cast(pl.Date).alias(name))
    return frame.with_columns(out) if out else frame

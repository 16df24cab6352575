"""Serialization and hostile entries: nothing read from Redis can run code; an entry that is not
an intact entry of this format, written for this very key, is a logged, counted miss."""

from __future__ import annotations

import datetime
import logging
import os
import pickle
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgpack
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from sa_redis_cache import QueryCache
from sa_redis_cache.errors import CorruptEntryError
from sa_redis_cache.serialization import (
    FORMAT_VERSION,
    decode_payload,
    encode_entry,
    entry_header,
    entry_signature,
)
from tests.conftest import DatabaseReads, raw_client
from tests.models import Department, Employee

ROW_VALUES: list[Any] = [
    None, True, 0, -(2**63), 2**64 + 1, 1.5, "text ü", b"\x00\xff", bytearray(b"ba"),
    Decimal("-1.2300"), datetime.datetime(2024, 2, 29, 23, 59, 59, 999999),
    datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=-3))),
    datetime.date(1, 1, 1), datetime.time(12, 30, 1, 5), datetime.timedelta(days=-2, seconds=7),
    {"a", "b"}, uuid.UUID(int=7),
]  # fmt: skip


def test_every_driver_value_type_round_trips_exactly() -> None:
    description = tuple((f"c{i}", 3, None, None, None, None, True) for i in range(len(ROW_VALUES)))
    header = entry_header("d1gest")
    encoded = encode_entry(header, "epoch", [1, 2], description, [tuple(ROW_VALUES)])
    prefix = header + entry_signature("epoch", [1, 2])
    assert encoded.startswith(prefix)
    entry = decode_payload(encoded[len(prefix) :])
    assert entry.description == description
    [row] = entry.rows
    assert list(row) == ROW_VALUES
    expected_types = [bytes if type(v) is bytearray else type(v) for v in ROW_VALUES]
    assert [type(v) for v in row] == expected_types


def test_values_without_a_faithful_encoding_are_refused() -> None:
    with pytest.raises(TypeError):
        encode_entry(entry_header("d"), "e", [], (), [(object(),)])


class WritesAFile:
    path = ""

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.path),))


def hostile_payloads(tmp_path: Path, valid_other_key: bytes) -> dict[str, bytes]:
    WritesAFile.path = str(tmp_path / "pwned")
    return {
        "garbage": os.urandom(64),
        "empty": b"",
        "pickle that writes a file": pickle.dumps(WritesAFile()),
        "entry of another key": valid_other_key,
        "old format version": b"SRC%d|" % (FORMAT_VERSION - 1) + valid_other_key.split(b"|", 1)[1],
        "unknown value type": msgpack.packb(msgpack.ExtType(99, b"x")),
        "truncated": valid_other_key[: len(valid_other_key) // 2],
    }


def entry_keys(cache: QueryCache) -> set[bytes]:
    return set(raw_client(cache).scan_iter(match="{" + cache.namespace + "}:e:*"))


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize(
    "kind",
    [
        "garbage",
        "empty",
        "pickle that writes a file",
        "entry of another key",
        "old format version",
        "unknown value type",
        "truncated",
    ],
)
def test_hostile_entry_is_a_logged_counted_miss(
    kind: str,
    engine: Engine,
    cached: sessionmaker[Session],
    query_cache: QueryCache,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with cached() as session:
        session.scalars(select(Department)).all()
    [other_key] = entry_keys(query_cache)
    with cached() as session:
        names = list(session.scalars(select(Employee.name).order_by(Employee.id)))
    [key] = entry_keys(query_cache) - {other_key}

    payload = hostile_payloads(tmp_path, raw_client(query_cache).get(other_key))[kind]
    raw_client(query_cache).set(key, payload, px=60_000)
    errors = query_cache.stats()["errors"]
    reads = DatabaseReads(engine)
    with caplog.at_level(logging.WARNING, logger="sa_redis_cache"), cached() as session:
        assert list(session.scalars(select(Employee.name).order_by(Employee.id))) == names
    assert reads.count == 1
    assert query_cache.stats()["errors"] == errors + 1
    assert "corrupt cache entry" in caplog.text
    assert not (tmp_path / "pwned").exists()

    reads.reset()  # the bad entry was overwritten by a good one
    with cached() as session:
        assert list(session.scalars(select(Employee.name).order_by(Employee.id))) == names
    reads.close()
    assert reads.count == 0


@pytest.mark.parametrize(
    "payload",
    [b"", b"\xc1", msgpack.packb([FORMAT_VERSION + 1, (), ()]), msgpack.packb([FORMAT_VERSION])],
)
def test_decode_rejects_what_is_not_a_payload_of_this_format(payload: bytes) -> None:
    with pytest.raises(CorruptEntryError):
        decode_payload(payload)


def crafted_bodies(valid_body: bytes) -> dict[str, bytes]:
    """Bodies for an entry whose header, epoch and versions are right: only the body is bad."""
    _, description, rows = msgpack.unpackb(valid_body, raw=False)
    width = len(description)

    def body(*fields: Any) -> bytes:
        packed: bytes = msgpack.packb(list(fields), use_bin_type=True)
        return packed

    return {
        "malformed msgpack": b"\xc1",
        "truncated": valid_body[: len(valid_body) // 2],
        "trailing bytes": valid_body + b"\x00",
        "unknown extension type": body(FORMAT_VERSION, description, [[msgpack.ExtType(99, b"x")]]),
        "bad extension data": body(FORMAT_VERSION, description, [[msgpack.ExtType(1, b"nan?")]]),
        "another format version": body(FORMAT_VERSION + 1, description, rows),
        "rows not a list": body(FORMAT_VERSION, description, 5),
        "a row that is not a list": body(FORMAT_VERSION, description, [5]),
        "a row with too few values": body(FORMAT_VERSION, description, [[]]),
        "a row with too many values": body(FORMAT_VERSION, description, [["x"] * (width + 1)]),
        "description not a list of columns": body(FORMAT_VERSION, [5] * width, rows),
        "description of another width": body(FORMAT_VERSION, [*description, *description], rows),
    }


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize(
    "kind",
    [
        "malformed msgpack",
        "truncated",
        "trailing bytes",
        "unknown extension type",
        "bad extension data",
        "another format version",
        "rows not a list",
        "a row that is not a list",
        "a row with too few values",
        "a row with too many values",
        "description not a list of columns",
        "description of another width",
    ],
)
def test_crafted_entry_with_a_bad_body_is_a_counted_miss_then_overwritten(
    kind: str,
    engine: Engine,
    cached: sessionmaker[Session],
    query_cache: QueryCache,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An entry that passes the lookup script (its header, epoch and versions are the current
    ones) but whose body is not a result of this statement: the database answers, the error is
    counted and logged, nothing raises into the application, and a good entry replaces it."""
    statement = select(Employee.name).order_by(Employee.id)
    with cached() as session:
        names = list(session.scalars(statement))
    [key] = entry_keys(query_cache)
    entry = raw_client(query_cache).get(key)
    prefix = entry[: entry.index(b";") + 1]  # header, epoch and versions
    raw_client(query_cache).set(key, prefix + crafted_bodies(entry[len(prefix) :])[kind], px=60_000)

    errors = query_cache.stats()["errors"]
    reads = DatabaseReads(engine)
    with caplog.at_level(logging.WARNING, logger="sa_redis_cache"), cached() as session:
        assert list(session.scalars(statement)) == names
    assert reads.count == 1
    assert query_cache.stats()["errors"] == errors + 1
    assert "corrupt cache entry" in caplog.text

    reads.reset()  # the bad entry was overwritten by a good one
    with cached() as session:
        assert list(session.scalars(statement)) == names
    reads.close()
    assert reads.count == 0

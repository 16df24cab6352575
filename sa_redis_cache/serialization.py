"""Serialization: cache entries as msgpack of plain DBAPI values, never pickle.

An entry holds the raw rows the driver returned (before SQLAlchemy's type processing), so the ORM
builds its objects from a hit exactly as from the database. Decoding cannot run code: the only
extension types are the few value types drivers return (Decimal, dates and times, sets, UUIDs,
integers wider than 64 bits), each rebuilt by its own constructor. (A ``bytearray`` comes back as
``bytes``, like every binary value; the drivers we serve return ``bytes``.)
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, Final, NamedTuple

import msgpack

from .errors import CorruptEntryError

FORMAT_VERSION: Final = 1
"""Part of every key and of every entry: a change of layout here makes old entries unreachable."""

Row = tuple[Any, ...]
Description = tuple[tuple[Any, ...], ...]


class Entry(NamedTuple):
    epoch: str
    versions: tuple[int, ...]
    description: Description
    rows: tuple[Row, ...]


_DECIMAL, _DATETIME, _DATE, _TIME, _TIMEDELTA, _BIGINT, _SET, _UUID = range(1, 9)


def _td_encode(value: datetime.timedelta) -> bytes:
    return f"{value.days} {value.seconds} {value.microseconds}".encode()


def _td_decode(data: bytes) -> datetime.timedelta:
    days, seconds, micros = (int(part) for part in data.split())
    return datetime.timedelta(days=days, seconds=seconds, microseconds=micros)


_ENCODERS: Final[dict[type, Callable[[Any], msgpack.ExtType]]] = {
    Decimal: lambda v: msgpack.ExtType(_DECIMAL, str(v).encode()),
    datetime.datetime: lambda v: msgpack.ExtType(_DATETIME, v.isoformat().encode()),
    datetime.date: lambda v: msgpack.ExtType(_DATE, v.isoformat().encode()),
    datetime.time: lambda v: msgpack.ExtType(_TIME, v.isoformat().encode()),
    datetime.timedelta: lambda v: msgpack.ExtType(_TIMEDELTA, _td_encode(v)),
    int: lambda v: msgpack.ExtType(_BIGINT, str(v).encode()),  # only reached past 64 bits
    set: lambda v: msgpack.ExtType(_SET, _pack(list(v))),
    frozenset: lambda v: msgpack.ExtType(_SET, _pack(list(v))),
    uuid.UUID: lambda v: msgpack.ExtType(_UUID, v.bytes),
}

_DECODERS: Final[dict[int, Callable[[bytes], Any]]] = {
    _DECIMAL: lambda b: Decimal(b.decode()),
    _DATETIME: lambda b: datetime.datetime.fromisoformat(b.decode()),
    _DATE: lambda b: datetime.date.fromisoformat(b.decode()),
    _TIME: lambda b: datetime.time.fromisoformat(b.decode()),
    _TIMEDELTA: _td_decode,
    _BIGINT: lambda b: int(b.decode()),
    _SET: lambda b: set(_unpack(b)),
    _UUID: lambda b: uuid.UUID(bytes=b),
}


def _default(value: Any) -> msgpack.ExtType:
    encoder = _ENCODERS.get(type(value))
    if encoder is None:
        raise TypeError(f"cannot cache a value of type {type(value).__qualname__}")
    return encoder(value)


def _ext_hook(code: int, data: bytes) -> Any:
    decoder = _DECODERS.get(code)
    if decoder is None:
        raise CorruptEntryError(f"unknown value type code {code}")
    return decoder(data)


def _pack(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value, default=_default, use_bin_type=True)
    return packed


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, use_list=False)


def encode_parameters(parameters: Any) -> bytes:
    """Bound parameters as bytes for the key; TypeError if a value has no faithful encoding."""
    return _pack(parameters)


def encode_entry(
    key_digest: bytes,
    epoch: str,
    versions: Sequence[int],
    description: Sequence[Sequence[Any]],
    rows: Sequence[Sequence[Any]],
) -> bytes:
    """An entry: format version, the digest of its own key, the versions it was computed against,
    and the raw result. TypeError if a value has no faithful encoding."""
    return _pack([FORMAT_VERSION, key_digest, epoch, list(versions), description, rows])


def decode_entry(data: bytes, key_digest: bytes) -> Entry:
    """Decode an entry found under the key whose digest is ``key_digest``.

    Raises CorruptEntryError for anything that is not an intact entry of this format written for
    this very key (garbage, another format version, an entry copied from another key).
    """
    try:
        fields = _unpack(data)
    except CorruptEntryError:
        raise
    except Exception as exc:  # msgpack raises several types for malformed input
        raise CorruptEntryError(f"undecodable entry: {exc}") from exc
    if not isinstance(fields, tuple) or len(fields) != 6:
        raise CorruptEntryError("not a cache entry")
    version, digest, epoch, versions, description, rows = fields
    if version != FORMAT_VERSION:
        raise CorruptEntryError(f"entry format {version!r}, expected {FORMAT_VERSION}")
    if digest != key_digest:
        raise CorruptEntryError("entry was written for another key")
    if not (isinstance(epoch, str) and isinstance(versions, tuple) and isinstance(rows, tuple)):
        raise CorruptEntryError("malformed entry")
    return Entry(epoch, versions, description, rows)

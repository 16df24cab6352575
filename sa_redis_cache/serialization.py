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
from operator import itemgetter
from typing import Any, Final, NamedTuple

import msgpack

from .errors import CorruptEntryError

FORMAT_VERSION: Final = 1
"""Part of every key and of every entry: a change of layout here makes old entries unreachable."""

Row = tuple[Any, ...]
Description = tuple[tuple[Any, ...], ...]


class Entry(NamedTuple):
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


def entry_header(key_digest: str) -> bytes:
    """What every entry stored under the key with this (hex) digest starts with: the format
    version and the digest, so that an entry of another format or copied from another key is
    recognised."""
    return _HEADER_START + key_digest.encode() + b"|"


_HEADER_START: Final = b"SRC%d|" % FORMAT_VERSION


def entry_signature(epoch: str, versions: Sequence[int]) -> bytes:
    """After the header: the epoch and table versions the result was computed against. The lookup
    script rebuilds it from the current versions and hands out the payload only on a match."""
    return f"{epoch}:{','.join(map(str, versions))};".encode()


def encode_entry(
    header: bytes,
    epoch: str,
    versions: Sequence[int],
    description: Sequence[Sequence[Any]],
    rows: Sequence[Sequence[Any]],
) -> bytes:
    """A whole entry: header, signature, then the raw result as msgpack.
    TypeError if a value has no faithful encoding."""
    return header + entry_signature(epoch, versions) + _pack([FORMAT_VERSION, description, rows])


def decode_payload(payload: bytes) -> Entry:
    """Decode the payload the lookup script returned. CorruptEntryError if it is not intact."""
    try:
        fields = _unpack(payload)
    except CorruptEntryError:
        raise
    except Exception as exc:  # msgpack raises several types for malformed input
        raise CorruptEntryError(f"undecodable entry: {exc}") from exc
    if not isinstance(fields, tuple) or len(fields) != 3 or fields[0] != FORMAT_VERSION:
        raise CorruptEntryError("not a cache entry of this format")
    _, description, rows = fields
    if not isinstance(rows, tuple) or not isinstance(description, tuple):
        raise CorruptEntryError("malformed entry")
    # the ORM indexes rows by the description: a row of another shape would raise in SQLAlchemy's
    # result processing (after the cache's hooks) or be served; a DBAPI column has 7 fields
    # (set(map(...)) runs in C: a thousand rows cost microseconds)
    if description and (
        set(map(type, description)) != _TUPLE
        or set(map(len, description)) != _SEVEN
        or set(map(type, map(itemgetter(0), description))) != _STR
    ):
        raise CorruptEntryError("malformed column description")
    if rows and (set(map(type, rows)) != _TUPLE or set(map(len, rows)) != {len(description)}):
        raise CorruptEntryError("a row does not match the description")
    return Entry(description, rows)


_TUPLE: Final = {tuple}
_SEVEN: Final = {7}
_STR: Final = {str}

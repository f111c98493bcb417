"""numpy <-> `tensor`: psycopg 3 loaders and dumpers.

After `register_tensor(conn)`, a `tensor` value in a result arrives as a
float32 `numpy.ndarray` of the right shape, and an ndarray passed as a query
parameter is sent as a `tensor`:

    >>> conn.execute("SELECT %s::tensor", [np.eye(2)]).fetchone()[0]
    array([[1., 0.],
           [0., 1.]], dtype=float32)

Two wire formats, both spoken by the extension:

* text, as you would type it: '[[1,2,3],[4,5,6]]'; a tensor of more than
  8,388,608 values comes as 'base64:[50257,768]:...', its float32 values
  little-endian in base64 (the server reads both forms)
* binary (`cursor(binary=True)`; what tensor_send writes and tensor_recv
  reads), all big-endian:
      int16 ndim (1..8), int16 dtype (0 = float32), int32 dims[ndim],
      then prod(dims) float32 values, row-major.
"""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
from psycopg.adapt import Dumper, Loader
from psycopg.pq import Format
from psycopg.types import TypeInfo

MAX_NDIM = 8
DTYPE_FLOAT32 = 0


# -- conversions (no database needed) -----------------------------------------

def check_shape(shape: tuple[int, ...]) -> None:
    """A tensor has 1 to 8 dimensions, none of them empty."""
    if not 1 <= len(shape) <= MAX_NDIM:
        raise ValueError(f"a tensor needs 1 to {MAX_NDIM} dimensions, got shape {list(shape)}")
    if 0 in shape:
        raise ValueError(f"a tensor cannot have an empty dimension, got shape {list(shape)}")


def as_float32(array) -> np.ndarray:
    """`array` as a C-contiguous float32 ndarray with a valid tensor shape."""
    if np.iscomplexobj(array):
        raise TypeError("a tensor holds real numbers, got a complex array")
    array = np.asarray(array, dtype=np.float32, order="C")  # (ascontiguousarray would make 0-d 1-d)
    check_shape(array.shape)
    return array


def to_binary(array) -> bytes:
    """The binary wire format of `array` (see the module docstring)."""
    array = as_float32(array)
    header = struct.pack(f">hh{array.ndim}i", array.ndim, DTYPE_FLOAT32, *array.shape)
    return header + array.astype(">f4").tobytes()


def from_binary(data) -> np.ndarray:
    """Decode the binary wire format into a float32 ndarray."""
    ndim, dtype = struct.unpack_from(">hh", data, 0)
    if dtype != DTYPE_FLOAT32:
        raise ValueError(f"unsupported tensor dtype {dtype}")
    shape = struct.unpack_from(f">{ndim}i", data, 4)
    values = np.frombuffer(data, dtype=">f4", count=int(np.prod(shape)), offset=4 + 4 * ndim)
    return values.astype(np.float32).reshape(shape)  # astype copies into native byte order


def to_text(array) -> str:
    """The text format of `array`: '[[1.0,2.0],[3.0,4.0]]'.

    float32 -> Python float is exact, and Python prints floats so that
    they read back exactly: the server gets the very same float32 values.
    """
    return json.dumps(as_float32(array).tolist(), separators=(",", ":"))


BASE64_PREFIX = "base64:"


def from_text(text: str) -> np.ndarray:
    """Parse the text format ('[[1,2],[3,4]]', or 'base64:[2,2]:...' for a big tensor) into a float32 ndarray."""
    if text.startswith(BASE64_PREFIX):
        shape, _, payload = text[len(BASE64_PREFIX):].partition(":")
        values = np.frombuffer(base64.b64decode(payload), dtype="<f4")
        return values.astype(np.float32).reshape(json.loads(shape))
    return np.array(json.loads(text, parse_int=float), dtype=np.float32)  # keeps -0


# -- psycopg adapters ---------------------------------------------------------

class TensorBinaryLoader(Loader):
    format = Format.BINARY

    def load(self, data) -> np.ndarray:
        return from_binary(data)


class TensorTextLoader(Loader):
    format = Format.TEXT

    def load(self, data) -> np.ndarray:
        return from_text(bytes(data).decode())


class TensorBinaryDumper(Dumper):
    format = Format.BINARY

    def dump(self, obj) -> bytes:
        return to_binary(obj)


class TensorTextDumper(Dumper):
    format = Format.TEXT

    def dump(self, obj) -> bytes:
        return to_text(obj).encode()


def register_tensor(conn, load_numpy: bool = True) -> TypeInfo:
    """Teach one psycopg connection (or cursor) to load and dump `tensor`.

    Needs the extension in the database (CREATE EXTENSION pg_llm).  Also
    registers `tensor[]`, which loads as a list of ndarrays.  With
    load_numpy=False results keep their text form ('[[1,2],[3,4]]') and only
    ndarray parameters are adapted.
    """
    info = TypeInfo.fetch(conn, "tensor")
    if info is None:
        raise LookupError("type \"tensor\" not found: run CREATE EXTENSION pg_llm first")
    info.register(conn)
    adapters = conn.adapters
    if load_numpy:
        adapters.register_loader(info.oid, TensorTextLoader)
        adapters.register_loader(info.oid, TensorBinaryLoader)
    # Dumpers carry the type oid, so the server knows the parameter is a tensor.
    # Binary is registered last: it is the one used for plain %s placeholders.
    for dumper in (TensorTextDumper, TensorBinaryDumper):
        adapters.register_dumper(np.ndarray, type(dumper.__name__, (dumper,), {"oid": info.oid}))
    return info

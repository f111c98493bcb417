"""The tensor's on-disk format, pinned byte for byte.

pg_upgrade copies the data files as they are, and a restored base backup is
the same bytes: a newer pg_llm must read what an older one wrote.  The bytes
here are written out from the layout in extension/src/tensor/tensor.h with
struct.pack, independently of the code; a change of the layout fails here
and needs a new format number (and a reader of the old one).

Format 0, little-endian: int16 ndim, uint8 dtype (0: float32), uint8 format
(0), int32 dims[8] (unused: 0), then the float32 values row-major; in the
heap behind PostgreSQL's varlena header (1 byte up to 126 bytes of value,
else 4).
"""
import struct

import psycopg
import pytest


def payload(shape, values, fmt=0):
    dims = list(shape) + [0] * (8 - len(shape))
    return struct.pack(f"<hBB8i{len(values)}f", len(shape), 0, fmt, *dims, *values)


def on_disk(shape, values):
    """The varlena as the heap stores it (PostgreSQL's little-endian headers)."""
    body = payload(shape, values)
    if len(body) + 1 <= 127:
        return bytes([(len(body) + 1) << 1 | 1]) + body
    return struct.pack("<I", (len(body) + 4) << 2) + body


CASES = [
    ("[[1,2,3],[4,5,6]]", (2, 3), [1, 2, 3, 4, 5, 6]),
    ("[-0.5]", (1,), [-0.5]),
    ("[[[0.25]],[[-2]]]", (2, 1, 1), [0.25, -2]),
    ("[" + ",".join(f"{i / 8:g}" for i in range(40)) + "]", (40,), [i / 8 for i in range(40)]),
]


@pytest.fixture
def pageinspect(conn):
    conn.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
    conn.execute("CREATE TABLE tf_format (t tensor)")
    yield conn
    conn.execute("DROP TABLE tf_format")
    conn.execute("DROP EXTENSION pageinspect")


def test_tensors_are_stored_in_format_0(pageinspect):
    conn = pageinspect
    for text, _, _ in CASES:
        conn.execute("INSERT INTO tf_format VALUES (%s::tensor)", [text])
    stored = [bytes(d) for d, in conn.execute(
        "SELECT t_data FROM heap_page_items(get_raw_page('tf_format', 0)) ORDER BY lp").fetchall()]
    assert stored == [on_disk(shape, values) for _, shape, values in CASES]


@pytest.fixture
def as_tensor(conn):
    """Reads bytes stored by something else than pg_llm as a tensor value, as
    pg_upgrade leaves them: stored as a bytea, whose column then becomes a
    tensor column in the catalog only (rolled back)."""
    def read(body):
        with conn.transaction(force_rollback=True):
            conn.execute("CREATE TABLE tf_read (t bytea)")
            conn.execute("INSERT INTO tf_read VALUES (%s)", [body])
            conn.execute("UPDATE pg_attribute SET atttypid = 'tensor'::regtype, attalign = 'd' "
                         "WHERE attrelid = 'tf_read'::regclass AND attname = 't'")
            return conn.execute("SELECT t::text FROM tf_read").fetchone()[0]
    return read


def test_format_0_written_independently_is_read(as_tensor):
    for text, shape, values in CASES:
        assert as_tensor(payload(shape, values)) == text


def test_an_unknown_format_is_an_error(as_tensor):
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="on-disk format 1; this pg_llm reads format 0"):
        as_tensor(payload((2,), [1, 2], fmt=1))

"""Bad input is an ERROR with a fitting SQLSTATE, a long op can be cancelled,
and neither ever takes the backend down."""
import threading
import time

import psycopg
import pytest

BAD_CALLS = [
    # (SQL, SQLSTATE, a piece of the message)
    ("SELECT '[1,2'::tensor", "22P02", "invalid input syntax for type tensor"),
    ("SELECT '[[1,2],[3]]'::tensor", "22P02", "ragged"),
    ("SELECT '[]'::tensor", "22P02", "empty"),
    ("SELECT '[1e99]'::tensor", "22003", "out of range"),
    ("SELECT '{1,NULL}'::real[]::tensor", "22004", "NULL"),
    ("SELECT llm_tensor('{1,2,3}'::real[], '{2,2}')", "22000", "do not fill shape [2,2]"),
    ("SELECT llm_tensor('{1}'::real[], '{2147483647,2147483647}')", "22003", "too large"),
    ("SELECT '\\x000000'::bytea::tensor", "22P03", "not a whole number of float32"),
    ("SELECT llm_matmul('[[1,2,3]]', '[[1,2]]')", "22000", "shapes [1,3] and [1,2] do not align"),
    ("SELECT llm_matmul('[1,2]', '[[1],[2]]')", "22000", "must be a 2-D tensor, got shape [2]"),
    ("SELECT llm_add('[[1,2]]', '[1,2,3]')", "22000", "do not broadcast"),
    ("SELECT llm_softmax('[1, NaN]')", "22P01", "NaN"),
    ("SELECT llm_layernorm('[[1,2]]', '[1,1]', '[0,0]', -1)", "22023", "eps"),
    ("SELECT llm_embedding('[[1,2]]', '{5}')", "22023", "id 5"),
    ("SELECT llm_embedding('[[1,2]]', '{NULL}')", "22004", "NULL"),
    ("SELECT llm_cross_entropy('[[1,2]]', '{0,1}')", "22000", "2 targets"),
    ("SELECT llm_attention('[[1,2,3]]', '[[1,2,3]]', '[[1,2,3]]', 2)", "22023", "n_head 2"),
    ("SELECT llm_slice('[[1],[2]]', 1, 5)", "2202E", "rows [1, 5)"),
    ("SELECT llm_reshape('[1,2,3]', '{2,2}')", "22000", "cannot reshape [3]"),
]


@pytest.mark.parametrize("sql,sqlstate,message", BAD_CALLS)
def test_bad_input_is_a_clear_error(conn, sql, sqlstate, message):
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql)
    assert info.value.sqlstate == sqlstate
    assert message in str(info.value)
    assert conn.execute("SELECT 1").fetchone()[0] == 1


def test_binary_input_is_checked(conn):
    """A hand-made binary value whose shape and payload disagree is refused."""
    import struct

    from psycopg import pq

    oid = conn.execute("SELECT 'tensor'::regtype::oid").fetchone()[0]
    payload = struct.pack(">hhi", 1, 0, 3) + struct.pack(">2f", 1, 2)  # claims 3 values, holds 2
    result = conn.pgconn.exec_params(b"SELECT $1", [payload], [oid], [1])
    assert result.error_field(pq.DiagnosticField.SQLSTATE) == b"22P03"
    assert b"needs 12 bytes" in result.error_message


BIG_MATMUL = """SELECT llm_shape(llm_matmul(x, x))
                FROM (SELECT llm_tensor(array_fill(1::real, ARRAY[4096 * 4096]), '{4096,4096}') AS x) s"""


def test_cancel_stops_a_long_op(conn):
    """Ctrl-C (a query cancel) interrupts a kernel mid-way; the session survives."""
    conn.execute("SET pg_llm.threads = 1")
    start = time.monotonic()
    conn.execute(BIG_MATMUL)
    full = time.monotonic() - start

    timer = threading.Timer(full / 3, conn.cancel)
    start = time.monotonic()
    timer.start()
    with pytest.raises(psycopg.errors.QueryCanceled):
        conn.execute(BIG_MATMUL)
    timer.join()
    assert time.monotonic() - start < 0.8 * full, "the cancel waited for the matmul to finish"
    assert conn.execute("SELECT 1").fetchone()[0] == 1

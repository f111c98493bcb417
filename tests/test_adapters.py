"""numpy <-> tensor: the wire formats on their own, then round trips through the server."""

import base64
import struct

import numpy as np
import psycopg
import pytest
import sqlalchemy

import pg_llm_lab
from pg_llm_lab import adapters

SHAPES = [(1,), (7,), (2, 3), (3, 1), (2, 3, 4), (1, 2, 1, 2, 1, 2, 1, 2), (64, 129)]


def random_array(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# -- without a database -------------------------------------------------------

def test_binary_layout():
    data = adapters.to_binary(np.array([[1, 2, 3], [4, 5, 6]]))
    assert data[:12] == struct.pack(">hhii", 2, 0, 2, 3)
    assert data[12:] == struct.pack(">6f", 1, 2, 3, 4, 5, 6)


@pytest.mark.parametrize("shape", SHAPES)
def test_binary_and_text_round_trip(shape):
    a = random_array(shape)
    for decoded in (adapters.from_binary(adapters.to_binary(a)), adapters.from_text(adapters.to_text(a))):
        assert decoded.dtype == np.float32 and decoded.shape == shape
        np.testing.assert_array_equal(decoded, a)


def test_dump_accepts_any_real_array():
    b = adapters.from_binary(adapters.to_binary(np.arange(6, dtype=np.int64).reshape(2, 3).T))
    np.testing.assert_array_equal(b, [[0, 3], [1, 4], [2, 5]])  # transposed view, ints
    assert adapters.from_text("[[1,2],[3,4]]").shape == (2, 2)
    assert np.isnan(adapters.from_text("[NaN,Infinity,-Infinity]")).tolist() == [True, False, False]


@pytest.mark.parametrize("bad", [np.float32(1.0), np.zeros((2, 0)), np.zeros((0,)), np.zeros((1,) * 9)])
def test_bad_shapes_are_refused(bad):
    with pytest.raises(ValueError, match=r"shape \["):
        adapters.to_binary(bad)
    with pytest.raises(ValueError, match=r"shape \["):
        adapters.to_text(bad)


def test_complex_is_refused():
    with pytest.raises(TypeError):
        adapters.to_binary(np.ones(2, dtype=complex))


# -- through the server --------------------------------------------------------

@pytest.mark.parametrize("binary", [False, True], ids=["text-result", "binary-result"])
@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip_through_server(conn, shape, binary):
    a = random_array(shape, seed=len(shape))
    with conn.cursor(binary=binary) as cur:
        for placeholder in ("%s", "%b", "%t"):  # auto (binary), binary and text parameters
            b = cur.execute(f"SELECT {placeholder}::tensor", [a]).fetchone()[0]
            assert isinstance(b, np.ndarray) and b.dtype == np.float32 and b.shape == shape
            np.testing.assert_array_equal(b, a)


@pytest.mark.parametrize("binary", [False, True])
def test_text_literal_and_null(conn, binary):
    with conn.cursor(binary=binary) as cur:
        t, null = cur.execute("SELECT '[[1,2,3],[4,5,6]]'::tensor, NULL::tensor").fetchone()
    np.testing.assert_array_equal(t, [[1, 2, 3], [4, 5, 6]])
    assert null is None


def test_a_big_tensor_is_base64_text(conn):
    """Beyond 8,388,608 values the text form is base64 of the little-endian float32 bytes."""
    a = random_array((2, 4194305), seed=3)
    a[0, :3] = [-0.0, np.inf, np.nan]
    with conn.cursor(binary=False) as cur:
        text = cur.execute("SELECT %b::tensor::text", [a]).fetchone()[0]
        assert text == "base64:[2,4194305]:" + base64.b64encode(a.astype("<f4").tobytes()).decode()
        loaded = cur.execute("SELECT %b::tensor", [a]).fetchone()[0]
        assert loaded.tobytes() == a.tobytes()                              # text loader: every bit
        back = cur.execute("SELECT %s::tensor", [text]).fetchone()[0]      # tensor_in reads it back
        assert back.tobytes() == a.tobytes()
        assert cur.execute("SELECT left(%b::tensor::text, 3)", [a[:, :-1]]).fetchone()[0] == "[[-"


@pytest.mark.parametrize("bad", ["base64:[2]:AAAA", "base64:[2]:!!!!!!!!!!!=", "base64:2:AAAAAAAAAAA=",
                                 "base64:[2]AAAAAAAAAAA=", "base64:[-2]:", "base64:[2,]:AAAAAAAAAAA="])
def test_server_rejects_bad_base64_text(conn, bad):
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        conn.execute("SELECT %s::tensor", [bad])


def test_tensor_array_loads_as_list(conn):
    arrays = conn.execute("SELECT ARRAY['[1,2]'::tensor, '[[3]]'::tensor]").fetchone()[0]
    assert [a.shape for a in arrays] == [(2,), (1, 1)]


def test_server_rejects_ragged_text(conn):
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        conn.execute("SELECT '[[1,2],[3]]'::tensor")


@pytest.mark.parametrize("numpy", [True, False])
def test_sqlalchemy_engine(db_url, numpy):
    eng = pg_llm_lab.engine(db_url, numpy=numpy)
    with eng.connect() as c:
        t = c.execute(sqlalchemy.text("SELECT CAST(:a AS tensor)"), {"a": np.eye(2)}).scalar_one()
    eng.dispose()
    if numpy:
        np.testing.assert_array_equal(t, np.eye(2, dtype=np.float32))
    else:
        assert t == "[[1,0],[0,1]]"  # the text form, as %sql shows it

"""Datasets from text (llm_dataset_from_text, pg_llm_lab.prepare_dataset, the
prepare-dataset command) and llm_eval against HF's loss on the same rows."""
import math

import psycopg
import pytest
import torch
import torch.nn.functional as F
from test_cli import run_cli
from text_models import CORPUS, drop, load_model, train_tokenizer

import pg_llm_lab

NAME = "ds_model"
TEXT = " ".join(CORPUS * 4)


@pytest.fixture(scope="module")
def model(db_url):
    with pg_llm_lab.connect(db_url) as conn:
        eot = train_tokenizer(conn, NAME)
        hf = load_model(conn, NAME)
    yield hf, eot
    with pg_llm_lab.connect(db_url) as conn:
        drop(conn, NAME)


@pytest.fixture
def fresh(conn):
    """The llm_dataset rows a test adds are removed after it."""
    last = conn.execute("SELECT coalesce(max(id), 0) FROM llm_dataset").fetchone()[0]
    yield last
    conn.execute("DELETE FROM llm_dataset WHERE id > %s", [last])


def rows_since(conn, last):
    return conn.execute("SELECT tokens, target, split FROM llm_dataset WHERE id > %s ORDER BY id",
                        [last]).fetchall()


def blocks(ids, block, stride, split):
    return [(ids[s:s + block], ids[s + 1:s + block + 1], split) for s in range(0, len(ids) - block, stride)]


def test_from_text_cuts_the_encoded_text(conn, model, fresh):
    ids = conn.execute("SELECT llm_encode(%s, %s)", [TEXT, NAME]).fetchone()[0]
    added = conn.execute("SELECT llm_dataset_from_text(%s, %s, 16, 8, val_fraction => 0.25)",
                         [NAME, TEXT]).fetchone()[0]
    n_val = int(len(ids) * 0.25)
    want = blocks(ids[:len(ids) - n_val], 16, 8, "train") + blocks(ids[len(ids) - n_val:], 16, 8, "val")
    got = rows_since(conn, fresh)
    assert added == len(got) == len(want)
    assert sorted(got) == sorted(want)          # the splits share no block, and nothing is lost


def test_eval_is_hf_loss_over_the_split(conn, model, fresh):
    hf, _ = model
    conn.execute("SELECT llm_dataset_from_text(%s, %s, 24, split => 'ds_eval')", [NAME, TEXT])
    rows = conn.execute("SELECT tokens, target FROM llm_dataset WHERE split = 'ds_eval' ORDER BY id").fetchall()
    rows[1] = (rows[1][0], [-100] * 5 + rows[1][1][5:])     # ignored targets count for nothing
    conn.execute("UPDATE llm_dataset SET target = %s WHERE id = (SELECT id FROM llm_dataset "
                 "WHERE split = 'ds_eval' ORDER BY id OFFSET 1 LIMIT 1)", [rows[1][1]])
    with torch.no_grad():
        logits = torch.cat([hf(torch.tensor([t])).logits[0] for t, _ in rows])
        want = F.cross_entropy(logits, torch.tensor([x for _, y in rows for x in y]), ignore_index=-100).item()
    loss, perplexity, tokens, examples = conn.execute("SELECT * FROM llm_eval(%s, 'ds_eval')",
                                                      [NAME]).fetchone()
    assert examples == len(rows) and tokens == sum(x != -100 for _, y in rows for x in y)
    assert loss == pytest.approx(want, rel=1e-5)
    assert perplexity == pytest.approx(math.exp(loss), rel=1e-12)
    first = conn.execute("SELECT loss FROM llm_eval(%s, 'ds_eval', max_rows => 1)", [NAME]).fetchone()[0]
    assert first == pytest.approx(conn.execute("SELECT llm_loss(%s, %s, %s)", [NAME, *rows[0]]).fetchone()[0],
                                  rel=1e-6)


def test_prepare_dataset_joins_files_with_endoftext(conn, model, fresh, tmp_path):
    _, eot = model
    files = [tmp_path / "a.txt", tmp_path / "b.txt"]
    files[0].write_text(CORPUS[0] * 3, encoding="utf-8")
    files[1].write_text(CORPUS[2] * 3, encoding="utf-8")
    added = pg_llm_lab.prepare_dataset(conn, files, NAME, 8, val_fraction=0.2)
    ids = [i for f in files for i in
           conn.execute("SELECT llm_encode(%s, %s)", [f.read_text(encoding="utf-8"), NAME]).fetchone()[0] + [eot]][:-1]
    n_val = int(len(ids) * 0.2)
    want = blocks(ids[:len(ids) - n_val], 8, 8, "train") + blocks(ids[len(ids) - n_val:], 8, 8, "val")
    assert added == len(want) and sorted(rows_since(conn, fresh)) == sorted(want)


def test_prepare_dataset_command(db_url, conn, model, fresh, tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text(TEXT, encoding="utf-8")
    result = run_cli(db_url, "prepare-dataset", str(text), "--model", NAME, "--block-size", "16")
    assert result.returncode == 0, result.stderr
    added = len(rows_since(conn, fresh))
    assert added > 0 and f"added {added} rows of 16 tokens" in result.stdout
    assert {split for *_, split in rows_since(conn, fresh)} == {"train", "val"}


@pytest.mark.parametrize("sql, params, sqlstate, words", [
    ("SELECT llm_dataset_from_text(%s, 'some text', 4, val_fraction => 1)", [NAME], "22023", "val_fraction"),
    ("SELECT llm_dataset_from_text(%s, 'a b', 64)", [NAME], "22023", "too few for one block of 64"),
    ("SELECT llm_dataset_from_text(%s, NULL, 4)", [NAME], "22004", "input"),
    ("SELECT * FROM llm_eval(%s, 'no_such_split')", [NAME], "P0002", "no_such_split"),
    ("SELECT * FROM llm_eval(%s, 'train', 0)", [NAME], "22023", "max_rows"),
])
def test_bad_input(conn, model, fresh, sql, params, sqlstate, words):
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql, params)
    assert info.value.sqlstate == sqlstate and words in str(info.value)
    assert rows_since(conn, fresh) == []


def test_prepare_dataset_refuses_missing_files_and_adds_nothing(conn, model, fresh, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        pg_llm_lab.prepare_dataset(conn, [tmp_path / "missing.txt"], NAME, 8)
    (tmp_path / "tiny.txt").write_text("x", encoding="utf-8")
    with pytest.raises(psycopg.Error):
        pg_llm_lab.prepare_dataset(conn, [tmp_path / "tiny.txt"], NAME, 8)
    assert rows_since(conn, fresh) == []

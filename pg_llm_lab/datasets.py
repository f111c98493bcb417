"""Training data from text files: the original pg_llm's prepare_dataset.py job.

    from pg_llm_lab.datasets import prepare_dataset
    prepare_dataset(conn, ["input.txt"], "shakespeare", block_size=64, val_fraction=0.1,
                    dataset="shakespeare")

Each file is read here, on the client, and encoded on the server by the
model's tokenizer (llm_encode); documents are joined with <|endoftext|>.  The
last val_fraction of the token stream becomes split 'val', the rest 'train'
(the two never share a block), cut into rows of llm_dataset by
llm_dataset_from_tokens -- all in one transaction: on any error nothing is
added.  Then `SELECT * FROM llm_eval(model, 'val', dataset => ...)` scores a model on it.
"""
from __future__ import annotations

from pathlib import Path


def prepare_dataset(conn, files, model: str, block_size: int, *, stride: int | None = None,
                    val_fraction: float = 0.1, dataset: str | None = None, progress: bool = False) -> int:
    """Add the text of `files` to llm_dataset `dataset` (default: named after the
    database role) as blocks of `block_size` tokens of `model`'s tokenizer; returns
    the number of rows added."""
    paths = [Path(f).expanduser() for f in files]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=sum(p.stat().st_size for p in paths), unit="B", unit_scale=True,
                   desc=f"encoding for {model}")
    with conn.transaction():
        eot = conn.execute("SELECT eot_id FROM llm_tokenizer_info(%s)", [model]).fetchone()[0]
        tokens: list[int] = []
        for path in paths:
            text = path.read_text(encoding="utf-8")
            if tokens and eot is not None:
                tokens.append(eot)      # documents are separated, as GPT-2's training data
            tokens += conn.execute("SELECT llm_encode(%s, %s)", [text, model]).fetchone()[0]
            if progress:
                bar.update(path.stat().st_size)
        added = conn.execute("SELECT llm_dataset_from_tokens(%s::int[], %s, %s, 'train', %s, "
                             "coalesce(%s, current_user::text))",
                             [tokens, block_size, stride, val_fraction, dataset]).fetchone()[0]
    if progress:
        bar.close()
    return added

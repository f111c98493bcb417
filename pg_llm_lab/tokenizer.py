"""GPT-2's byte-level BPE tokenizer files, in and out of the database, from the client side.

    from pg_llm_lab import tokenizer
    tokenizer.load_tokenizer(conn, "gpt2/vocab.json", "gpt2/merges.txt", "gpt2")
    conn.execute("SELECT llm_encode('Hello world!', 'gpt2')").fetchone()[0]   # [15496, 995, 0]
    tokenizer.export_tokenizer(conn, "gpt2", "out/")        # out/vocab.json, out/merges.txt

load_tokenizer reads the files *here* and sends the rows over the
connection (one transaction): it works with any server, remote or in
Docker.  The SQL function pg_llm_load_bpe(vocab_path, merges_path, model)
does the same with files on the *server*.  Both apply the same rules (see
read_vocab, read_merges) and leave the tables as they were on any error.

The reference tokenizers that the tests and the benchmark compare
against are built here too, offline, from the same two files:
hf_tokenizer() (HuggingFace `tokenizers`) and tiktoken_encoding().
"""

from __future__ import annotations

import json
import os
from pathlib import Path

VERSION_LINE = "#version: 0.2"
EOT = "<|endoftext|>"
# GPT-2's pre-tokenizer pattern (openai/gpt-2 encoder.py), as tiktoken writes it.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte alphabet: the printable character that stands for each byte.

    '!'..'~', '¡'..'¬' and '®'..'ÿ' stand for themselves; the other 68 bytes
    (control characters, space, ...) are U+0100.. in byte order: b' ' -> 'Ġ'.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in chars]
    chars.update({b: chr(256 + i) for i, b in enumerate(others)})
    return chars


_UNICODE_TO_BYTE = {c: b for b, c in bytes_to_unicode().items()}


def token_bytes(token: str) -> bytes:
    """The bytes a token stands for ('Ġthe' -> b' the'); characters outside the
    alphabet (in added tokens) stand for their UTF-8 (SQL: llm_bpe_token_bytes)."""
    return b"".join(bytes([_UNICODE_TO_BYTE[c]]) if c in _UNICODE_TO_BYTE else c.encode()
                    for c in token)


# -- reading the files -----------------------------------------------------------

def _not_an_id(text):
    raise ValueError(f"{text} is not a token id (a non-negative integer)")


def _id(text: str) -> int:
    if text.startswith("-"):
        _not_an_id(text)
    return int(text)


def read_vocab(path) -> list[str]:
    """The tokens of a vocab.json, by id.  The rules of pg_llm_load_bpe_vocab:
    one JSON object of token -> id, each token once, ids exactly 0..n-1.
    Raises ValueError naming what is wrong."""
    path = Path(path)
    data = path.read_bytes()
    if not data:
        raise ValueError(f"{path} is empty")
    parsed = json.loads(data.decode("utf-8"), object_pairs_hook=lambda pairs: ("object", pairs),
                        parse_int=_id, parse_float=_not_an_id, parse_constant=_not_an_id)
    if not (isinstance(parsed, tuple) and parsed[0] == "object"):
        raise ValueError(f"{path} is not a JSON object")
    pairs = parsed[1]
    by_id: dict[int, str] = {}
    seen: dict[str, int] = {}
    for token, id_ in pairs:
        if not isinstance(id_, int) or isinstance(id_, bool) or not 0 <= id_ < 2**31:
            raise ValueError(f"{path}: token {token!r} has id {id_!r}, not an integer 0..2^31-1")
        if token == "" or "\0" in token:
            raise ValueError(f"{path}: a token is empty or holds NUL")
        token.encode("utf-8")  # a lone surrogate (\ud800) raises here
        if token in seen:
            raise ValueError(f"{path} lists the token {token!r} twice (ids {seen[token]} and {id_})")
        if id_ in by_id:
            raise ValueError(f"{path} gives id {id_} to both {by_id[id_]!r} and {token!r}")
        seen[token] = id_
        by_id[id_] = token
    if not by_id:
        raise ValueError(f"{path} has no tokens")
    if max(by_id) != len(by_id) - 1:
        raise ValueError(f"{path} has {len(by_id)} tokens, so their ids must be 0..{len(by_id) - 1}, "
                         f"but one has id {max(by_id)}")
    return [by_id[i] for i in range(len(by_id))]


def read_merges(path) -> list[tuple[str, str]]:
    """The merges of a merges.txt, in rank order.  The rules of
    pg_llm_load_bpe_merges: lines starting "#version" are skipped; every
    other line is two non-empty tokens and one space; each merge once."""
    path = Path(path)
    data = path.read_bytes()
    if not data:
        raise ValueError(f"{path} is empty")
    text = data.decode("utf-8")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    merges: list[tuple[str, str]] = []
    seen: dict[tuple[str, str], int] = {}
    for number, line in enumerate(lines, 1):
        line = line.removesuffix("\r")
        if line.startswith("#version"):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or "" in parts or "\0" in line:
            raise ValueError(f"{path}: line {number} is not two tokens and one space: {line!r}")
        pair = (parts[0], parts[1])
        if pair in seen:
            raise ValueError(f"{path}: line {number} repeats the merge of line {seen[pair]}")
        seen[pair] = number
        merges.append(pair)
    return merges


# -- the database ------------------------------------------------------------------

def load_tokenizer(conn, vocab_path, merges_path, model: str) -> tuple[int, int]:
    """Load vocab.json and merges.txt (files here, on the client) as tokenizer
    `model`: the rows go over the connection as two arrays, one INSERT each (COPY
    FROM is refused where row-level security applies: a learner's session), in
    one transaction that ends by checking that the two files belong together.  On
    any error the tables are left as they were.  Returns (tokens, merges)."""
    tokens = read_vocab(vocab_path)
    merges = read_merges(merges_path)
    with conn.transaction():
        conn.execute("INSERT INTO llm_tokenizer (model) VALUES (%s) ON CONFLICT (model) DO NOTHING", [model])
        conn.execute("DELETE FROM llm_bpe_vocab WHERE model = %s", [model])
        conn.execute("DELETE FROM llm_bpe_merges WHERE model = %s", [model])
        conn.execute("INSERT INTO llm_bpe_vocab (model, token, id) "
                     "SELECT %s, t.token, (t.i - 1)::int FROM unnest(%s::text[]) WITH ORDINALITY AS t(token, i)",
                     [model, tokens])
        conn.execute('INSERT INTO llm_bpe_merges (model, rank, "left", "right") '
                     "SELECT %s, (m.i - 1)::int, m.l, m.r FROM unnest(%s::text[], %s::text[]) "
                     "WITH ORDINALITY AS m(l, r, i)",
                     [model, [left for left, _ in merges], [right for _, right in merges]])
        conn.execute("SELECT llm_tokenizer_info(%s)", [model])  # errors if they do not fit
    return len(tokens), len(merges)


def has_tokenizer(conn, model: str) -> bool:
    return conn.execute("SELECT EXISTS (SELECT 1 FROM llm_bpe_vocab WHERE model = %s)",
                        [model]).fetchone()[0]


def vocab_json(tokens: list[str]) -> str:
    return json.dumps({token: i for i, token in enumerate(tokens)}, ensure_ascii=False)


def merges_txt(merges: list[tuple[str, str]]) -> str:
    return VERSION_LINE + "\n" + "".join(f"{left} {right}\n" for left, right in merges)


def export_tokenizer(conn, model: str, out_dir) -> tuple[Path, Path]:
    """Write tokenizer `model` as out_dir/vocab.json and out_dir/merges.txt, as
    HuggingFace writes them (GPT2TokenizerFast.from_pretrained reads them).
    Returns the two paths."""
    from .hf import _write_atomically  # one atomic writer for every file we export

    out_dir = Path(out_dir).expanduser()
    with conn.transaction():
        conn.execute("SELECT llm_tokenizer_info(%s)", [model])  # exists, and is consistent
        tokens = [row[0] for row in conn.execute(
            "SELECT token FROM llm_bpe_vocab WHERE model = %s ORDER BY id", [model])]
        merges = [tuple(row) for row in conn.execute(
            'SELECT "left", "right" FROM llm_bpe_merges WHERE model = %s ORDER BY rank', [model])]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / "vocab.json", out_dir / "merges.txt"
    for path, content in zip(paths, (vocab_json(tokens), merges_txt(merges))):
        _write_atomically(path, lambda tmp, content=content: tmp.write_text(content, encoding="utf-8"))
    return paths


# -- reference tokenizers (for comparisons) -----------------------------------------

def hf_tokenizer(vocab_path, merges_path):
    """A HuggingFace `tokenizers.Tokenizer` for the two files: BPE, ByteLevel
    pre-tokenizer and decoder, add_prefix_space=False (GPT-2's pipeline)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE.from_file(str(vocab_path), str(merges_path)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def tiktoken_encoding(vocab_path, merges_path=None, name: str = "pg_llm_offline"):
    """A `tiktoken.Encoding` built offline from a vocab.json: ranks are the ids
    of the tokens' bytes, the pattern is GPT-2's, <|endoftext|> is special.
    (tiktoken needs no merges: it merges by the rank of the joined bytes,
    which for GPT-2's files gives HF's result.)"""
    import tiktoken

    tokens = read_vocab(vocab_path)
    ranks = {token_bytes(t): i for i, t in enumerate(tokens) if t != EOT}
    special = {EOT: tokens.index(EOT)} if EOT in tokens else {}
    return tiktoken.Encoding(name, pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=special)


def shared_data_dir() -> Path | None:
    """The lab's shared data folder (GPT-2's tokenizer files, Tiny Shakespeare):
    $PG_LLM_LAB_SHARED_DATA, else ../shared/data beside the repository; None if absent."""
    env = os.environ.get("PG_LLM_LAB_SHARED_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return path if path.is_dir() else None

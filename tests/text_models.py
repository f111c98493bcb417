"""Shared by the text generation tests: a byte-level BPE tokenizer trained in
SQL (llm_bpe_train) on a small corpus with accents, CJK and emoji, and a
random GPT-2 with its vocabulary size under the same name."""
import pg_llm_lab
from hf_checkpoints import make_hf_model

CORPUS = [
    "The cat sat on the mat. The dog sat on the log.",
    "Le café est très chaud, déjà prêt à être bu.",
    "日本語のテキストも少し。東京と京都。",
    "Emoji too: 🐘 and 🐍 and 🚀, why not?",
    "Once upon a time there was a database that dreamed of language.",
]
VOCAB = 320
N_POSITIONS = 64


def train_tokenizer(conn, name, vocab_size=VOCAB):
    """Tokenizer `name` learnt from CORPUS; returns the id of <|endoftext|>."""
    assert conn.execute("SELECT llm_bpe_train(%s, %s::text[], %s)",
                        (name, CORPUS, vocab_size)).fetchone()[0] == vocab_size
    return conn.execute("SELECT eot_id FROM llm_tokenizer_info(%s)", (name,)).fetchone()[0]


def load_model(conn, name, vocab_size=VOCAB, seed=3, tweak=None, **config):
    """A random GPT-2 (2 layers, 64 wide, 64 positions) as model `name`,
    after tweak(model) if given; returns the HF model."""
    config = dict(dict(n_layer=2, n_head=2, n_embd=64, n_positions=N_POSITIONS), **config)
    model = make_hf_model(seed=seed, vocab_size=vocab_size, **config)
    if tweak is not None:
        tweak(model)
    conn.execute("DELETE FROM llm_model_config WHERE model = %s", (name,))
    pg_llm_lab.import_hf(conn, model, name, progress=False)
    return model


def drop(conn, pattern):
    """Remove the models and tokenizers whose name is LIKE pattern."""
    conn.execute("DELETE FROM llm_model_config WHERE model LIKE %s", (pattern,))
    conn.execute("DELETE FROM llm_tokenizer WHERE model LIKE %s", (pattern,))

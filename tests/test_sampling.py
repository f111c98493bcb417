"""llm_sampling_probs against HuggingFace's logits processors, and sampled
generation with a repetition penalty against HF's generate().

HF's reference: RepetitionPenaltyLogitsProcessor (over the previous ids),
then TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, then
softmax -- the order generate(do_sample=True) applies them in.  Temperature 0
is greedy: probability 1 for torch.argmax of the penalised logits.
"""
import numpy as np
import psycopg
import pytest

torch = pytest.importorskip("torch", reason="the parity tests compare with PyTorch")
pytest.importorskip("transformers", reason="the parity tests compare with HF's logits processors")
from transformers.generation.logits_process import (  # noqa: E402
    RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

from hf_checkpoints import make_hf_model  # noqa: E402

import pg_llm_lab  # noqa: E402


def hf_probs(logits, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, previous=()):
    """softmax of HF's processed scores, for each row of logits [rows, V]."""
    scores = torch.from_numpy(np.array(logits, dtype=np.float32))
    if repetition_penalty != 1.0 and len(previous):
        ids = torch.tensor([list(previous)] * scores.shape[0])
        scores = RepetitionPenaltyLogitsProcessor(float(repetition_penalty))(ids, scores)
    if temperature == 0:
        out = torch.zeros_like(scores)
        out[torch.arange(scores.shape[0]), scores.argmax(-1)] = 1
        return out.numpy(), scores.numpy()
    scores = TemperatureLogitsWarper(float(temperature))(None, scores)
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return torch.softmax(scores, -1).numpy(), scores.numpy()


def db_probs(conn, logits, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, previous=()):
    return conn.execute(
        "SELECT llm_sampling_probs(%s, %s, %s, %s, %s, %s)",
        (np.asarray(logits, np.float32), temperature, top_k, top_p, repetition_penalty,
         list(previous) or None)).fetchone()[0]


def assert_same_distribution(got, want, logits):
    """Equal probabilities, token for token -- except that among tokens with
    equal logits at the top-p boundary HF keeps whichever its (unstable) sort
    put last, and we keep the lower ids: there the kept logits must agree as
    a multiset, and the probabilities as sorted vectors."""
    assert got.shape == want.shape
    if np.array_equal(got > 0, want > 0):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
        return
    for g, w, x in zip(got.reshape(-1, got.shape[-1]), want.reshape(-1, want.shape[-1]),
                       logits.reshape(-1, logits.shape[-1])):
        np.testing.assert_array_equal(np.sort(x[g > 0]), np.sort(x[w > 0]))
        np.testing.assert_allclose(np.sort(g), np.sort(w), rtol=1e-5, atol=1e-7)


def logits_cases():
    rng = np.random.default_rng(0)
    ties = np.round(rng.normal(0, 2, (3, 64)) * 2) / 2  # many equal logits, in 0.5 steps
    edge = rng.normal(0, 3, (2, 40)).astype(np.float32)
    edge[0, :5] = -np.inf  # masked tokens
    edge[1, 3] = 80.0      # one dominant token (the others underflow in float32)
    return {
        "normal_1000": rng.normal(0, 3, 1000).astype(np.float32),
        "rows_3x517": rng.normal(0, 1, (3, 517)).astype(np.float32),
        "ties": ties.astype(np.float32),
        "all_equal": np.zeros(16, np.float32),
        "edge": edge,
        "gpt2_vocab": rng.normal(0, 4, 50257).astype(np.float32),
    }


CASES = logits_cases()
SETTINGS = [
    dict(temperature=1.0),
    dict(temperature=0.7, top_k=5),
    dict(temperature=1.3, top_p=0.9),
    dict(temperature=0.5, top_k=20, top_p=0.5),
    dict(temperature=2.5, top_p=0.05),
    dict(temperature=1.0, top_k=1),
    dict(temperature=1.0, top_k=100000),  # more than the vocabulary: no filter
    dict(temperature=0.9, top_p=0.999),
    dict(temperature=0),
    dict(temperature=0, repetition_penalty=1.5, previous=(0, 1, 2, 3, 7, 7)),
    dict(temperature=1.0, repetition_penalty=1.3, previous=(0, 3, 5, 9, 11)),
    dict(temperature=0.8, top_k=10, top_p=0.8, repetition_penalty=0.6, previous=(1, 2, 4, 8)),
]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_sampling_probs_match_hf(conn, case, setting):
    logits = CASES[case]
    got = db_probs(conn, logits, **setting)
    want, _ = hf_probs(np.atleast_2d(logits), **setting)
    want = want.reshape(logits.shape)
    assert got.dtype == np.float32 and got.shape == logits.shape
    np.testing.assert_allclose(got.reshape(-1, logits.shape[-1]).sum(-1), 1, rtol=1e-5)
    assert_same_distribution(got, want, np.asarray(logits))


def test_top_p_ties_keep_the_lower_ids(conn):
    """Four equal logits, top_p 0.5: two tokens make 0.5 (HF keeps two as well)."""
    got = db_probs(conn, np.zeros(4, np.float32), top_p=0.5)
    np.testing.assert_array_equal(got, [0.5, 0.5, 0, 0])
    want, _ = hf_probs(np.zeros((1, 4)), top_p=0.5)
    assert (want > 0).sum() == 2


def test_top_k_keeps_every_tie_with_the_kth(conn):
    logits = np.array([3, 1, 3, 2, 3, 0], np.float32)
    got = db_probs(conn, logits, top_k=2)
    np.testing.assert_allclose(got, [1 / 3, 0, 1 / 3, 0, 1 / 3, 0], rtol=1e-6)
    want, _ = hf_probs(logits[None], top_k=2)
    np.testing.assert_allclose(got, want[0], rtol=1e-6)


def test_greedy_takes_the_first_of_equal_maxima(conn):
    got = db_probs(conn, np.array([1, 5, 2, 5, 5], np.float32), temperature=0)
    np.testing.assert_array_equal(got, [0, 1, 0, 0, 0])


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits(conn):
    # logits 2 and -2 at ids 0 and 1, both seen; penalty 2 -> 1 and -4
    got = db_probs(conn, np.array([2, -2, 0], np.float32), repetition_penalty=2.0, previous=(0, 1, 1))
    want = np.exp([1, -4, 0]) / np.exp([1, -4, 0]).sum()
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("sql,error,message", [
    ("SELECT llm_sampling_probs('[1,2]', -1)", psycopg.errors.InvalidParameterValue,
     "temperature must be a finite number >= 0, got -1"),
    ("SELECT llm_sampling_probs('[1,2]', 'Infinity')", psycopg.errors.InvalidParameterValue,
     "(?i)temperature .* got inf"),
    ("SELECT llm_sampling_probs('[1,2]', 1, -1)", psycopg.errors.InvalidParameterValue,
     "top_k must be >= 0, got -1"),
    ("SELECT llm_sampling_probs('[1,2]', 1, 0, 1.01)", psycopg.errors.InvalidParameterValue,
     r"top_p must be in \(0, 1\], got 1.01"),
    ("SELECT llm_sampling_probs('[1,2]', 1, 0, -0.1)", psycopg.errors.InvalidParameterValue,
     "got -0.1"),
    ("SELECT llm_sampling_probs('[1,2]', 1, 0, 1, 0)", psycopg.errors.InvalidParameterValue,
     "repetition_penalty must be a finite number > 0, got 0"),
    ("SELECT llm_sampling_probs('[1,2]', 1, 0, 1, 1, ARRAY[2])", psycopg.errors.InvalidParameterValue,
     "previous token id 2 at position 1 is outside the vocabulary 0..1"),
    ("SELECT llm_sampling_probs('[[[1,2]]]')", psycopg.errors.InvalidParameterValue,
     r"logits must be \[vocab\] or \[rows, vocab\], got \[1,1,2\]"),
    ("SELECT llm_sampling_probs('[1,NaN]')", psycopg.errors.FloatingPointException,
     r"non-finite logit \(NaN\) for token id 1"),
    ("SELECT llm_sampling_probs('[1,Infinity]')", psycopg.errors.FloatingPointException,
     r"non-finite logit \(Infinity\) for token id 1"),
    ("SELECT llm_sampling_probs('[-Infinity,-Infinity]')", psycopg.errors.InvalidParameterValue,
     "every logit is -Infinity"),
    ("SELECT llm_sampling_probs('[1, 2]', 1, 0, 1, 1e300)", psycopg.errors.NumericValueOutOfRange,
     "repetition_penalty 1e\\+300 is out of float32's range"),
    ("SELECT llm_sampling_probs('[1, 2]', 1, 0, 1, 1e-300)", psycopg.errors.NumericValueOutOfRange,
     "repetition_penalty 1e-300 is out of float32's range"),
])
def test_sampling_probs_bad_input(conn, sql, error, message):
    with pytest.raises(error, match=message):
        conn.execute(sql)


def test_temperatures_beyond_float32_give_the_limits(conn):
    """Where float32's logits / temperature overflows (HF's scores turn to
    NaN there), the distribution is the limit: greedy with ties sharing as
    the temperature goes to 0, uniform as it goes to infinity."""
    logits = np.array([1, 3, 3, -2, 0], np.float32)
    for tiny in (1e-300, 5e-324, 1e-45):
        np.testing.assert_array_equal(db_probs(conn, logits, temperature=tiny), [0, 0.5, 0.5, 0, 0])
    np.testing.assert_allclose(db_probs(conn, logits, temperature=1e300), [0.2] * 5, rtol=1e-6)
    np.testing.assert_allclose(db_probs(conn, logits, temperature=1e300, top_k=3), [1 / 3, 1 / 3, 1 / 3, 0, 0],
                               rtol=1e-6)
    np.testing.assert_array_equal(db_probs(conn, np.array([1e38, 0], np.float32), temperature=0.01), [1, 0])


def test_sampling_probs_null_is_null(conn):
    assert conn.execute("SELECT llm_sampling_probs(NULL)").fetchone()[0] is None


# ---- generation with a repetition penalty ------------------------------------------

@pytest.fixture(scope="module")
def sharp(db_url):
    """A small model with sharp logits, loaded as 's_sharp'."""
    model = make_hf_model(seed=7, scale=4.0, n_layer=2, n_head=2, n_embd=64, vocab_size=300,
                          n_positions=64)
    with pg_llm_lab.connect(db_url) as conn:
        conn.execute("DELETE FROM llm_model_config WHERE model = 's_sharp'")
        pg_llm_lab.import_hf(conn, model, "s_sharp", progress=False)
    yield model
    with pg_llm_lab.connect(db_url) as conn:
        conn.execute("DELETE FROM llm_model_config WHERE model = 's_sharp'")


def hf_last_logits(model, tokens):
    with torch.inference_mode():
        return model(torch.tensor([tokens])).logits[0, -1].numpy()


def test_greedy_with_repetition_penalty_matches_hf(conn, sharp):
    prompt = [5, 17, 5, 230]
    plain = conn.execute("SELECT llm_generate_tokens('s_sharp', %s, 30, 0)", (prompt,)).fetchone()[0]
    for penalty in (1.5, 0.8):
        got = conn.execute("SELECT llm_generate_tokens('s_sharp', %s, 30, 0, repetition_penalty => %s)",
                           (prompt, penalty)).fetchone()[0]
        assert got != plain  # the penalty changes what greedy decoding writes
        with torch.inference_mode():
            out = sharp.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 4, dtype=torch.long),
                                 do_sample=False, max_new_tokens=30, min_new_tokens=30,
                                 repetition_penalty=penalty, output_scores=True,
                                 return_dict_in_generate=True)
        want = out.sequences[0, len(prompt):].tolist()
        for i, (g, w) in enumerate(zip(got, want)):
            if g != w:  # only where HF's own top two are too close to call
                top2 = torch.topk(out.scores[i][0], 2).values
                assert (top2[0] - top2[1]).item() < 1e-3, f"token {i}: got {g}, HF {w}"
                break
        else:
            assert got == want


def test_sampled_draws_follow_the_penalised_distribution(conn, sharp):
    """4000 one-token draws with a penalty over the prompt follow HF's
    distribution.  The prompt holds two of the likeliest next tokens, so the
    penalty moves the distribution; top_k 8 leaves few enough tokens for 4000
    draws to estimate it to a few percent."""
    prompt = [7, 8, 9, 7, 256, 174]
    settings = dict(temperature=1.0, top_k=8, top_p=0.9)
    logits = hf_last_logits(sharp, prompt)
    want, _ = hf_probs(logits[None], repetition_penalty=1.8, previous=prompt, **settings)
    unpenalised, _ = hf_probs(logits[None], **settings)
    assert 0.5 * np.abs(want - unpenalised).sum() > 0.1
    n = 4000
    draws = conn.execute(
        "SELECT (llm_generate_tokens('s_sharp', %s, 1, 1.0, 8, 0.9, s, repetition_penalty => 1.8))[1]"
        " FROM generate_series(1, %s) s", (prompt, n)).fetchall()
    counts = np.bincount([d[0] for d in draws], minlength=300) / n
    assert set(np.flatnonzero(counts)) <= set(np.flatnonzero(want[0])), "drew a filtered-out token"
    assert 0.5 * np.abs(counts - want[0]).sum() < 0.05  # total variation distance

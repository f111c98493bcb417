"""llm_beam_search_tokens against HuggingFace's generate(num_beams=...,
do_sample=False) on the same random-init models: the same hypotheses, token
for token, in the same order, with sequences_scores within 1e-4.

Every setting HF's beam search reads is exercised: length_penalty (> 0, 0,
< 0), early_stopping (False, True, "never"), num_return_sequences, a stop id
(EOS) that really ends hypotheses, none, several, max_new_tokens 1, and the
repetition penalty.
"""
import numpy as np
import psycopg
import pytest

torch = pytest.importorskip("torch", reason="the parity tests compare with PyTorch")
pytest.importorskip("transformers", reason="the parity tests compare with HF's beam search")

from hf_checkpoints import make_hf_model  # noqa: E402

import pg_llm_lab  # noqa: E402

CONFIGS = {
    "b_tiny": dict(seed=0, n_layer=3, n_head=3, n_embd=96, vocab_size=1000, n_positions=64),
    "b_odd": dict(seed=1, n_layer=2, n_head=2, n_embd=34, vocab_size=517, n_positions=40, n_inner=50,
                  layer_norm_epsilon=1e-3),
    "b_small_vocab": dict(seed=2, n_layer=1, n_head=2, n_embd=16, vocab_size=13, n_positions=24),
}


@pytest.fixture(scope="module")
def models(db_url):
    out = {}
    with pg_llm_lab.connect(db_url) as conn:
        for name, config in CONFIGS.items():
            out[name] = make_hf_model(**config)
            conn.execute("DELETE FROM llm_model_config WHERE model = %s", (name,))
            pg_llm_lab.import_hf(conn, out[name], name, progress=False)
    yield out
    with pg_llm_lab.connect(db_url) as conn:
        conn.execute("DELETE FROM llm_model_config WHERE model LIKE 'b\\_%'")


def hf_beams(model, prompt, beam_width, max_new, eos=(), length_penalty=1.0, early_stopping=False,
             num_return=None, repetition_penalty=1.0):
    """[(score, new tokens)] of HF's beam search, best first."""
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False, num_beams=beam_width, num_return_sequences=num_return or beam_width,
            max_new_tokens=max_new, length_penalty=length_penalty, early_stopping=early_stopping,
            eos_token_id=list(eos) or None, repetition_penalty=repetition_penalty,
            output_scores=True, return_dict_in_generate=True)
    lengths = (out.beam_indices >= 0).sum(1)  # the new tokens of each hypothesis
    return [(out.sequences_scores[i].item(), out.sequences[i, len(prompt):len(prompt) + n].tolist())
            for i, n in enumerate(lengths.tolist())]


def db_beams(conn, name, prompt, beam_width, max_new, eos=(), length_penalty=1.0, early_stopping=False,
             num_return=None, repetition_penalty=1.0):
    rows = conn.execute(
        "SELECT rank, score, tokens FROM llm_beam_search_tokens(%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (name, prompt, beam_width, max_new, length_penalty, str(early_stopping).lower(),
         list(eos) or None, num_return, repetition_penalty)).fetchall()
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
    return [(score, tokens) for _, score, tokens in rows]


def assert_same_beams(got, want):
    assert [tokens for _, tokens in got] == [tokens for _, tokens in want]
    np.testing.assert_allclose([s for s, _ in got], [s for s, _ in want], rtol=0, atol=1e-4)


def likely_eos(model, prompt, beam_width, max_new):
    """A token the plain search writes in its best hypothesis: as EOS it ends hypotheses early."""
    return hf_beams(model, prompt, beam_width, max_new)[0][1][2]


CASES = [
    # name, prompt, beam_width, max_new, settings
    ("b_tiny", [1, 2, 3], 3, 6, {}),
    ("b_tiny", [1, 2, 3], 4, 12, dict(eos="likely")),
    ("b_tiny", [5], 2, 10, dict(eos="likely", length_penalty=0.0)),
    ("b_tiny", [1, 2, 3], 4, 10, dict(eos="likely", length_penalty=2.0, early_stopping=True)),
    ("b_tiny", [1, 2, 3], 4, 10, dict(eos="likely", length_penalty=-0.5, early_stopping="never")),
    ("b_tiny", [1, 2, 3], 5, 10, dict(eos="likely", length_penalty=1.5, early_stopping="never")),
    ("b_tiny", [7, 8, 9, 10], 5, 15, dict(eos="likely", num_return=2)),
    ("b_tiny", [7, 8, 9, 10], 4, 12, dict(eos="likely2", early_stopping=True)),  # two stop ids
    ("b_tiny", [1, 2, 3], 3, 12, dict(repetition_penalty=1.3)),
    ("b_tiny", [1, 2, 3], 4, 1, {}),
    ("b_tiny", [4, 4, 4], 8, 20, dict(eos="likely")),
    ("b_odd", [3, 1, 4, 1, 5], 3, 20, dict(eos="likely")),
    ("b_odd", list(range(30)), 2, 10, {}),  # prompt + new = n_positions
    ("b_small_vocab", [1, 2], 6, 12, dict(eos="likely")),  # K = 12 continuations of 13 tokens
]


@pytest.mark.parametrize("name,prompt,beam_width,max_new,settings", CASES,
                         ids=[f"{c[0]}-B{c[2]}-n{c[3]}-" + "-".join(f"{k}={v}" for k, v in c[4].items())
                              for c in CASES])
def test_beam_search_matches_hf(conn, models, name, prompt, beam_width, max_new, settings):
    model = models[name]
    settings = dict(settings)
    if settings.get("eos") == "likely":
        settings["eos"] = [likely_eos(model, prompt, beam_width, max_new)]
    elif settings.get("eos") == "likely2":
        best = hf_beams(model, prompt, beam_width, max_new)[0][1]
        settings["eos"] = [best[4], best[2]] if best[4] != best[2] else [best[2], (best[2] + 1) % 1000]
    want = hf_beams(model, prompt, beam_width, max_new, **settings)
    got = db_beams(conn, name, prompt, beam_width, max_new, **settings)
    assert_same_beams(got, want)
    if settings.get("eos"):
        # the stop ids change the outcome (or the case would prove less than it says)
        without = hf_beams(model, prompt, beam_width, max_new, **{**settings, "eos": ()})
        assert want != without


def test_beam_width_one_is_greedy(conn, models):
    prompt = [1, 2, 3]
    got = db_beams(conn, "b_tiny", prompt, 1, 15)
    greedy = conn.execute("SELECT llm_generate_tokens('b_tiny', %s, 15, 0)", (prompt,)).fetchone()[0]
    assert got[0][1] == greedy
    # score: the sum of the greedy tokens' log-probabilities / 15
    with torch.inference_mode():
        logits = models["b_tiny"](torch.tensor([prompt + greedy])).logits[0]
    logp = torch.log_softmax(logits.double(), -1)
    want = sum(logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(greedy)) / 15
    assert abs(got[0][0] - want) < 1e-4


def test_beams_are_deterministic_at_any_thread_count(conn, models):
    results = []
    for threads in (1, 2):
        conn.execute("SELECT set_config('pg_llm.threads', %s, false)", (str(threads),))
        results.append(db_beams(conn, "b_tiny", [9, 8, 7], 4, 12))
    conn.execute("RESET pg_llm.threads")
    assert results[0] == results[1]


@pytest.mark.parametrize("sql,error,message", [
    ("SELECT * FROM llm_beam_search_tokens('b_tiny', ARRAY[1], 0, 5)", psycopg.errors.InvalidParameterValue,
     "beam_width must be between 1 and 256, got 0"),
    ("SELECT * FROM llm_beam_search_tokens('b_tiny', ARRAY[1], 257, 5)", psycopg.errors.InvalidParameterValue,
     "got 257"),
    ("SELECT * FROM llm_beam_search_tokens('b_tiny', ARRAY[1], 2, 0)", psycopg.errors.InvalidParameterValue,
     "max_tokens must be >= 1, got 0"),
    ("SELECT * FROM llm_beam_search_tokens('b_tiny', ARRAY[1], 2, 5, 'NaN')",
     psycopg.errors.InvalidParameterValue, "(?i)length_penalty must be a finite number, got nan"),
    ("SELECT * FROM llm_beam_search_tokens('b_tiny', ARRAY[1], 2, 5, early_stopping => 'sometimes')",
     psycopg.errors.InvalidParameterValue, "early_stopping must be 'false', 'true' or 'never', got 'sometimes'"),
    ("SELECT * FROM llm_beam_search_tokens('b_tiny', ARRAY[1], 2, 5, num_return => 3)",
     psycopg.errors.InvalidParameterValue, r"num_return must be between 1 and beam_width \(2\), got 3"),
    ("SELECT * FROM llm_beam_search_tokens('b_tiny', ARRAY[1], 2, 5, repetition_penalty => -1)",
     psycopg.errors.InvalidParameterValue, "repetition_penalty must be a finite number > 0, got -1"),
    ("SELECT * FROM llm_beam_search_tokens('b_tiny', ARRAY[1], 2, 5, stop_ids => ARRAY[1000])",
     psycopg.errors.InvalidParameterValue, "stop id 1000 at position 1 is outside the vocabulary 0..999"),
    ("SELECT * FROM llm_beam_search_tokens('b_tiny', '{}', 2, 5)", psycopg.errors.InvalidParameterValue,
     "the prompt is empty"),
    ("SELECT * FROM llm_beam_search_tokens('b_tiny', ARRAY[1, 2], 2, 63)", psycopg.errors.InvalidParameterValue,
     "a prompt of 2 tokens plus 63 new tokens is longer than model \"b_tiny\" takes"),
    ("SELECT * FROM llm_beam_search_tokens('b_tiny', ARRAY[1000], 2, 5)", psycopg.errors.InvalidParameterValue,
     "token id 1000 at position 1"),
    ("SELECT * FROM llm_beam_search_tokens('no_such_model', ARRAY[1], 2, 5)", psycopg.errors.UndefinedObject,
     "unknown model \"no_such_model\""),
])
def test_beam_search_bad_input(conn, models, sql, error, message):
    with pytest.raises(error, match=message):
        conn.execute(sql)


def test_beam_search_null_arguments_give_no_rows(conn, models):
    assert conn.execute("SELECT * FROM llm_beam_search_tokens('b_tiny', NULL, 2, 5)").fetchall() == []

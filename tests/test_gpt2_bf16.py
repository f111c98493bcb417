"""pg_llm.inference_dtype = 'bf16' against HuggingFace's GPT2LMHeadModel.

Its meaning: every 2-D weight (wte, also as the tied lm_head, wpe, and each
block's matrices) rounded to bfloat16 to nearest even, everything else
(biases, LayerNorm, activations, sums) in fp32.  So the weights are imported
into pg_llm as they are, pg_llm rounds them itself, and its logits are
compared with HF's over a copy whose 2-D weights PyTorch rounded
(w.to(torch.bfloat16).to(torch.float32)), within fp32 parity's 1e-4.
"""
import copy

import numpy as np
import pytest

import pg_llm_lab

torch = pytest.importorskip("torch", reason="the parity tests compare with PyTorch")
transformers = pytest.importorskip("transformers", reason="the parity tests compare with HF GPT-2")

from hf_checkpoints import make_hf_model  # noqa: E402
from test_gpt2 import assert_logits_close, hf_logits, random_tokens  # noqa: E402
from test_ops import simd  # noqa: E402,F401 (each SIMD level the CPU has; the others skip)

CONFIGS = {
    "b_tiny": dict(n_layer=3, n_head=3, n_embd=96, vocab_size=1000, n_positions=64),
    # head size 17, odd MLP width: the kernels' ragged edges
    "b_odd": dict(n_layer=2, n_head=2, n_embd=34, vocab_size=517, n_positions=40, n_inner=50,
                  layer_norm_epsilon=1e-3),
}


def q(conn, sql, *params):
    return conn.execute(sql, params).fetchone()[0]


def rounded(model):
    """A copy of `model` with every 2-D weight rounded to bf16 (and back to fp32)."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for p in out.parameters():
            if p.ndim == 2:
                p.copy_(p.to(torch.bfloat16).to(torch.float32))
    return out


@pytest.fixture(scope="module")
def models(db_url):
    """name -> (HF model as imported, its bf16-rounded copy); scale 4 sharpens the
    logits, so greedy argmaxes are rarely near-ties."""
    out = {}
    with pg_llm_lab.connect(db_url) as conn:
        for i, (name, config) in enumerate(CONFIGS.items()):
            model = make_hf_model(seed=20 + i, scale=4.0, **config)
            conn.execute("DELETE FROM llm_model_config WHERE model = %s", (name,))
            pg_llm_lab.import_hf(conn, model, name, progress=False)
            out[name] = (model, rounded(model))
    return out


@pytest.fixture
def bf16(conn):
    conn.execute("SET pg_llm.inference_dtype = 'bf16'")
    yield conn
    conn.execute("RESET pg_llm.inference_dtype")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_are_fp32_over_rounded_weights(bf16, simd, models, name):
    model, model_bf16 = models[name]
    for n in (1, 5, model.config.n_positions):
        tokens = random_tokens(model.config.vocab_size, n, seed=n)
        got = q(bf16, "SELECT llm_logits(%s, %s)", name, tokens)
        assert_logits_close(got, hf_logits(model_bf16, tokens))
        # and not the fp32 model's: the rounding did happen
        unrounded = hf_logits(model, tokens)
        assert np.abs(got - unrounded).max() > 1e-3 * np.abs(unrounded).max()


def test_loss_and_fp32_after_switching_back(conn, bf16, models):
    model, model_bf16 = models["b_tiny"]
    tokens = random_tokens(1000, 30, seed=3)
    with torch.inference_mode():
        want = model_bf16(torch.tensor([tokens]), labels=torch.tensor([tokens])).loss.item()
    got = q(bf16, "SELECT llm_loss('b_tiny', %s, %s)", tokens, tokens[1:] + [-100])
    assert abs(got - want) <= 1e-4 * abs(want)
    conn.execute("SET pg_llm.inference_dtype = 'fp32'")
    assert_logits_close(q(conn, "SELECT llm_logits('b_tiny', %s)", tokens), hf_logits(model, tokens))


def test_bit_identical_at_any_thread_count(bf16, simd, models):
    tokens = random_tokens(1000, 64, seed=8)
    results = []
    for threads in (1, 2):
        bf16.execute("SELECT set_config('pg_llm.threads', %s, false)", (str(threads),))
        results.append((
            q(bf16, "SELECT llm_logits('b_tiny', %s)", tokens),
            q(bf16, "SELECT llm_generate_tokens('b_tiny', %s, 20, 0.8, 50, 0.9, 5)", tokens[:10]),
        ))
    bf16.execute("RESET pg_llm.threads")
    (l1, g1), (l2, g2) = results
    assert np.array_equal(l1.view(np.uint32), l2.view(np.uint32)) and g1 == g2


def hf_greedy(model, prompt, n_new):
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             do_sample=False, max_new_tokens=n_new, min_new_tokens=n_new,
                             output_scores=True, return_dict_in_generate=True)
    return out.sequences[0, len(prompt):].tolist(), out.scores


def check_greedy(got, want, scores):
    """Token for token, except where HF's own top-2 logits are too close to call."""
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            top2 = torch.topk(scores[i][0], 2).values
            assert (top2[0] - top2[1]).item() < 1e-3, f"token {i}: got {g}, HF {w}"
            break  # after an honest near-tie the two continuations differ


@pytest.mark.parametrize("name", list(CONFIGS))
def test_generation_each_dtype_matches_its_hf_model(conn, simd, models, name):
    """Decoding (the GEMV path, KV cache) in bf16 follows HF over the rounded
    weights, in fp32 HF over the weights as imported; the two may differ."""
    model, model_bf16 = models[name]
    for seed in range(2):
        prompt = random_tokens(model.config.vocab_size, 4, seed=seed)
        for dtype, reference in (("bf16", model_bf16), ("fp32", model)):
            conn.execute("SELECT set_config('pg_llm.inference_dtype', %s, false)", (dtype,))
            got = q(conn, "SELECT llm_generate_tokens(%s, %s, 30, 0)", name, prompt)
            check_greedy(got, *hf_greedy(reference, prompt, 30))
    conn.execute("RESET pg_llm.inference_dtype")


def test_cache_holds_both_dtypes_bf16_in_half_the_bytes(conn, models):
    tokens = [1, 2, 3]

    def cached():
        return conn.execute("SELECT dtype, version, bytes, loaded_at FROM llm_model_cache()"
                            " WHERE model = 'b_tiny' ORDER BY dtype").fetchall()

    q(conn, "SELECT llm_logits('b_tiny', %s)", tokens)
    conn.execute("SET pg_llm.inference_dtype = 'bf16'")
    q(conn, "SELECT llm_logits('b_tiny', %s)", tokens)
    conn.execute("RESET pg_llm.inference_dtype")
    q(conn, "SELECT llm_logits('b_tiny', %s)", tokens)
    entries = cached()
    assert [e[0] for e in entries] == ["bf16", "fp32"]
    (_, v16, bytes16, _), (_, v32, bytes32, _) = entries
    assert v16 == v32

    # the 2-D tensors at 2 bytes each, the 1-D ones at 4, each on 64 bytes
    model = models["b_tiny"][0]
    state = {n: p for n, p in model.state_dict().items() if not n.startswith("lm_head")
             and not n.endswith(".attn.bias") and not n.endswith(".masked_bias")}
    want16 = sum(-(-p.numel() * (2 if p.ndim == 2 else 4) // 64) * 64 for p in state.values())
    want32 = sum(-(-p.numel() * 4 // 64) * 64 for p in state.values())
    overhead = bytes32 - want32     # alignment and the model's name
    assert 0 <= overhead < 128 and bytes16 == want16 + overhead
    assert bytes16 < 0.55 * bytes32

    # switching back and forth decodes nothing again
    conn.execute("SET pg_llm.inference_dtype = 'bf16'")
    q(conn, "SELECT llm_logits('b_tiny', %s)", tokens)
    conn.execute("RESET pg_llm.inference_dtype")
    assert cached() == entries

    # a new version (a rewrite of one tensor, the same values) supersedes both dtypes
    conn.execute("UPDATE llm_param SET data = data WHERE model = 'b_tiny' AND name = 'ln_f.bias'")
    q(conn, "SELECT llm_logits('b_tiny', %s)", tokens)
    [(dtype, version, _, _)] = cached()
    assert dtype == "fp32" and version > v32

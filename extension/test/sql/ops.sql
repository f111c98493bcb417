-- Every tensor operation on small inputs whose results are easy to check.
SET extra_float_digits = 0;
-- values rounded to 6 decimals, so the last bit of float32 does not matter
CREATE FUNCTION r(x tensor) RETURNS numeric[] LANGUAGE sql AS
    $$ SELECT array_agg(round(v::numeric, 6)) FROM unnest(x::real[]) v $$;

-- matmul: [2,3] @ [3,2], and with transposes
SELECT llm_matmul('[[1,2,3],[4,5,6]]', '[[1,0],[0,1],[1,1]]');
SELECT llm_matmul('[[1,4],[2,5],[3,6]]', '[[1,0],[0,1],[1,1]]', transpose_a => true);
SELECT llm_matmul('[[1,2,3],[4,5,6]]', '[[1,0,1],[0,1,1]]', transpose_b => true);
SELECT llm_matmul('[[1,2,3]]', '[[1],[1],[1]]');

-- add / mul: same shape and a broadcast row (a bias)
SELECT llm_add('[[1,2],[3,4]]', '[[10,20],[30,40]]');
SELECT llm_add('[[1,2],[3,4]]', '[100,200]');
SELECT llm_mul('[[1,2],[3,4]]', '[2,-1]');
SELECT llm_scale('[1,-2,0.5]', 4);

-- shape operations
SELECT llm_transpose('[[1,2,3],[4,5,6]]');
SELECT llm_reshape('[[1,2,3],[4,5,6]]', '{3,2}');
SELECT llm_reshape('[[1,2,3],[4,5,6]]', '{-1}');
SELECT llm_slice('[[1,2],[3,4],[5,6]]', 1, 3);

-- gelu (tanh form): gelu(0) = 0, gelu(x) ~ x for large x, ~0 for very negative;
-- gelu(1) = 0.5 * (1 + tanh(sqrt(2/pi) * 1.044715)) = 0.841192
SELECT r(llm_gelu('[0, 10, -10, 1]'));

-- softmax: equal logits share equally; [0, ln 3, 0, 0] -> [1/6, 1/2, 1/6, 1/6]
SELECT r(llm_softmax('[[0,0,0,0],[0,1.0986123,0,0]]'));
-- causal over [3,3] scores: row i keeps columns 0..i
SELECT r(llm_softmax('[[1,1,1],[1,1,1],[1,1,1]]', causal => true));
-- causal with Tq < Tk (a decode step): the last query row sees every key
SELECT r(llm_softmax('[[1,1,1]]', causal => true));

-- layernorm: [1,3] has mean 2, var 1 -> [-1, 1] (eps tiny)
SELECT llm_layernorm('[[1,3],[5,5]]', '[1,1]', '[0,0]', 1e-12);
SELECT llm_layernorm('[[1,3]]', '[2,3]', '[10,20]', 1e-12);

-- embedding rows
SELECT llm_embedding('[[0,0],[1,1],[2,2]]', '{2,0,2}');

-- cross entropy: uniform logits over 4 classes -> ln 4 = 1.3862944
SELECT llm_cross_entropy('[[0,0,0,0],[0,0,0,0]]', '{1,3}');
-- -100 rows are ignored
SELECT llm_cross_entropy('[[0,0,0,0],[100,0,0,0]]', '{2,-100}');

-- attention: one key -> output is that key's value; equal scores average v
SELECT llm_attention('[[1,0]]', '[[5,5]]', '[[7,8]]', 1);
SELECT llm_attention('[[0,0],[0,0]]', '[[1,1],[2,2]]', '[[1,2],[3,4]]', 1, causal => true);
SELECT llm_attention('[[0,0],[0,0]]', '[[1,1],[2,2]]', '[[1,2],[3,4]]', 1, causal => false);
-- two heads of width 1: each head uses its own column
SELECT llm_attention('[[0,0]]', '[[1,1],[2,2]]', '[[1,10],[3,30]]', 2, causal => false);

-- the settings
SELECT current_setting('pg_llm.threads')::int >= 1 AS has_threads;
SET pg_llm.threads = 1;
SELECT llm_matmul('[[1,2],[3,4]]', '[[1,2],[3,4]]');
RESET pg_llm.threads;
SET pg_llm.simd = 'scalar';
SELECT llm_info()->>'simd';
SELECT llm_matmul('[[1,2],[3,4]]', '[[1,2],[3,4]]');
RESET pg_llm.simd;
SELECT llm_info() ? 'threads';
DROP FUNCTION r(tensor);

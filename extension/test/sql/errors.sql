-- Bad input is an ERROR with a fitting SQLSTATE and a message naming the shapes.
\set VERBOSITY sqlstate
\set SHOW_CONTEXT never
SELECT llm_matmul('[[1,2,3],[4,5,6]]', '[[1,2],[3,4]]');
\set VERBOSITY default
SELECT llm_matmul('[[1,2,3],[4,5,6]]', '[[1,2],[3,4]]');
SELECT llm_matmul('[[1,2,3]]', '[[1,2,3]]', transpose_b => false);
SELECT llm_matmul('[1,2,3]', '[[1],[2],[3]]');
SELECT llm_add('[[1,2],[3,4]]', '[1,2,3]');
SELECT llm_add('[1,2]', '[[1,2],[3,4]]');
SELECT llm_mul('[[1,2],[3,4]]', '[[1,2]]');
SELECT llm_scale('[1]', 'NaN');
SELECT llm_transpose('[1,2]');
SELECT llm_reshape('[1,2,3]', '{2,2}');
SELECT llm_reshape('[1,2,3]', '{-1,-1}');
SELECT llm_reshape('[1,2,3]', '{0}');
SELECT llm_reshape('[1]', ARRAY[-1,65536,65536,65536,65536]);
SELECT llm_reshape('[1,2,3,4]', '{{2},{2}}');
SELECT llm_fill('{{2},{2}}', 0);
SELECT llm_scale('[1]', 3.5e38);
SELECT '[1e-50]'::tensor;
SELECT llm_slice('[[1],[2]]', 1, 1);
SELECT llm_slice('[[1],[2]]', -1, 1);
SELECT llm_slice('[[1],[2]]', 0, 3);
SELECT llm_softmax('[1, NaN]');
SELECT llm_softmax('[1, Infinity]');
SELECT llm_softmax('[1, 2]', causal => true);
SELECT llm_softmax('[[1],[2]]', causal => true);
SELECT llm_layernorm('[[1,2]]', '[1,1,1]', '[0,0]');
SELECT llm_layernorm('[[1,2]]', '[1,1]', '[0,0]', 0);
SELECT llm_layernorm('[[1,NaN]]', '[1,1]', '[0,0]');
SELECT llm_embedding('[[1,2],[3,4]]', '{0,2}');
SELECT llm_embedding('[[1,2],[3,4]]', '{-1}');
SELECT llm_embedding('[[1,2],[3,4]]', '{}');
SELECT llm_embedding('[[1,2],[3,4]]', '{0,NULL}');
SELECT llm_embedding('[1,2]', '{0}');
SELECT llm_cross_entropy('[[1,2],[3,4]]', '{0}');
SELECT llm_cross_entropy('[[1,2],[3,4]]', '{0,2}');
SELECT llm_cross_entropy('[[1,2]]', '{-100}');
SELECT llm_cross_entropy('[[1,Infinity]]', '{0}');
SELECT llm_attention('[[1,2]]', '[[1,2,3]]', '[[1,2,3]]', 1);
SELECT llm_attention('[[1,2,3]]', '[[1,2,3]]', '[[1,2,3]]', 2);
SELECT llm_attention('[[1,2],[1,2]]', '[[1,2]]', '[[1,2]]', 1, causal => true);
SELECT llm_attention('[[1,2]]', '[[1,2]]', '[[1,2],[3,4]]', 1);
SET pg_llm.threads = 0;
SET pg_llm.simd = 'sse9';
-- the backend is still alive
SELECT 1;

-- The autograd tape: a graph built by hand in SQL, recorded, differentiated
-- by llm_backprop(); every gradient here can be checked by hand.
\set SHOW_CONTEXT never

SELECT llm_autograd_mode('full');
SELECT llm_prune_autograd_state();

-- y = x @ w with x = [[1,2]], w = [[3],[4]]: y = [[11]]
SELECT llm_matmul(llm_tensor_rt_leaf('[[1,2]]', 'x'), llm_tensor_rt_leaf('[[3],[4]]', 'w'));
SELECT id, op, inputs, output, shape FROM llm_tape ORDER BY id;
-- dy/dx = w^T = [[3,4]], dy/dw = x^T = [[1],[2]], dy/dy = 1
SELECT llm_backprop() AS tensors_reached;
SELECT id, param_name, shape, data, grad, produced_by FROM llm_tensor_rt ORDER BY id;

-- z = sum of 2 * (a * b): llm_scale and llm_mul; d z/d a = 2 b, d z/d b = 2 a
SELECT llm_prune_autograd_state();
SELECT llm_scale(llm_mul(llm_tensor_rt_leaf('[1,-2,3]', 'a'), llm_tensor_rt_leaf('[4,5,-6]', 'b')), 2);
SELECT llm_backprop(seed => '[1,1,1]') AS tensors_reached;
SELECT param_name, grad FROM llm_tensor_rt WHERE param_name IS NOT NULL ORDER BY id;

-- meta records the ops and shapes, not the values: llm_backprop() then says so
SELECT llm_autograd_mode('meta');
SELECT llm_prune_autograd_state();
SELECT llm_gelu('[[0,1]]');
SELECT op, shape FROM llm_tape;
SELECT count(data) AS values_kept FROM llm_tensor_rt;
SELECT llm_backprop(seed => '[[1,1]]');

-- off records nothing
SELECT llm_autograd_mode('off');
SELECT llm_prune_autograd_state();
SELECT llm_gelu('[[0,1]]');
SELECT count(*) AS ops FROM llm_tape;
SELECT llm_autograd_mode('sideways');

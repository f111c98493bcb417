-- The tensor type: text input and output, casts, constructors.
SELECT '[1,2,3]'::tensor;
SELECT '[[1,2,3],[4,5,6]]'::tensor;
SELECT ' [ [ 1.5 , -2e-3 ] , [ 3 , 4 ] ] '::tensor;
SELECT '[[[1],[2]],[[3],[4]]]'::tensor;
-- shortest round-trip output for float32
SELECT '[0.1, 0.2, 0.3, 1e-45, 3.4028235e38]'::tensor;
SELECT '[NaN, Infinity, -Infinity]'::tensor;
SELECT llm_shape('[[[1,2],[3,4],[5,6]]]'::tensor);

-- casts to and from real[]
SELECT '[[1,2],[3,4]]'::tensor::real[];
SELECT '{{1,2,3},{4,5,6}}'::real[]::tensor;
SELECT llm_shape('{{1,2,3},{4,5,6}}'::real[]::tensor);
SELECT llm_tensor('{1,2,3,4,5,6}'::real[], '{3,2}');
SELECT llm_tensor('{1,2,3,4,5,6}'::real[], '{1,2,3}');

-- raw little-endian float32 bytea (1.0 = 0x3f800000, 2.0 = 0x40000000)
SELECT '[1,2]'::tensor::bytea;
SELECT '\x0000803f00000040'::bytea::tensor;
SELECT llm_tensor('\x0000803f000000400000404000008040'::bytea, '{2,2}');

-- values survive a table, stored out of line when large
CREATE TABLE t (id int, x tensor);
INSERT INTO t VALUES (1, '[[1,2],[3,4]]'), (2, llm_tensor(array_fill(0.5::real, ARRAY[100000]), '{1000,100}'));
SELECT id, llm_shape(x) FROM t ORDER BY id;
SELECT llm_slice(x, 0, 1) FROM t WHERE id = 1;
SELECT llm_shape(llm_slice(x, 998, 1000)), (llm_slice(x, 998, 1000)::real[])[2][100] FROM t WHERE id = 2;
SELECT attstorage FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'x';
DROP TABLE t;

-- malformed text: 22P02
SELECT '[]'::tensor;
SELECT '[1,2'::tensor;
SELECT '[1,,2]'::tensor;
SELECT '[[1,2],[3]]'::tensor;
SELECT '[[1,2],3]'::tensor;
SELECT '[1,2] x'::tensor;
SELECT 'abc'::tensor;
SELECT '[1e99]'::tensor;
SELECT '[[[[[[[[[1]]]]]]]]]'::tensor;

-- bad casts and constructors
SELECT '{}'::real[]::tensor;
SELECT '{1,NULL,3}'::real[]::tensor;
SELECT llm_tensor('{1,2,3}'::real[], '{2,2}');
SELECT llm_tensor('{1,2,3,4}'::real[], '{2,0}');
SELECT llm_tensor('{1,2,3,4}'::real[], '{2,NULL}');
SELECT llm_tensor('{1}'::real[], '{1,1,1,1,1,1,1,1,1}');
SELECT llm_tensor('{1}'::real[], '{2147483647,2147483647}');
SELECT '\x0000803f000000'::bytea::tensor;
SELECT llm_tensor('\x0000803f00000040'::bytea, '{3}');
SELECT ''::bytea::tensor;

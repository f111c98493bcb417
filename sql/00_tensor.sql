-- pg_llm: the tensor type (extension/src/tensor/).
-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION pg_llm" to load this file. \quit

-- An n-dimensional float32 array (1 to 8 dimensions), row-major.
--   SELECT '[[1,2,3],[4,5,6]]'::tensor;
CREATE TYPE tensor;

CREATE FUNCTION tensor_in(cstring) RETURNS tensor
    AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION tensor_in(cstring) IS
    'text input of tensor: nested lists such as ''[[1,2,3],[4,5,6]]'' give a [2,3] tensor (lists of a level have one length); '
    'or ''base64:[2,3]:...'', the float32 values little-endian in base64, as tensor_out writes a big tensor';
CREATE FUNCTION tensor_out(tensor) RETURNS cstring
    AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION tensor_out(tensor) IS
    'text output of tensor: one bracketed list per dimension, e.g. [[1,2,3],[4,5,6]] for a [2,3] tensor; beyond '
    '8388608 values base64:[shape]:<the float32 values little-endian, in base64> (a row pg_dump writes stays under 1 GB)';
CREATE FUNCTION tensor_recv(internal) RETURNS tensor
    AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION tensor_recv(internal) IS
    'binary input of tensor: int16 ndim, int16 dtype (0 = float32), int32 dims[ndim], then the float4 values row-major';
CREATE FUNCTION tensor_send(tensor) RETURNS bytea
    AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION tensor_send(tensor) IS
    'binary output of tensor, in the format tensor_recv reads: int16 ndim, int16 dtype, int32 dims[ndim], float4 values';

-- Floats do not compress: store large values out of line, uncompressed.
CREATE TYPE tensor (
    INPUT = tensor_in,
    OUTPUT = tensor_out,
    RECEIVE = tensor_recv,
    SEND = tensor_send,
    INTERNALLENGTH = VARIABLE,
    ALIGNMENT = double,
    STORAGE = external
);

COMMENT ON TYPE tensor IS 'n-dimensional float32 array (1 to 8 dims), row-major';

-- real[] <-> tensor: the array's dimensions become the shape.
CREATE FUNCTION tensor(real[]) RETURNS tensor
    AS 'MODULE_PATHNAME', 'tensor_from_real_array' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION tensor(real[]) IS
    'cast real[] -> tensor: the array''s dimensions become the shape, e.g. ''{{1,2},{3,4}}'' -> [2,2]; no NULL elements';
CREATE FUNCTION real_array(tensor) RETURNS real[]
    AS 'MODULE_PATHNAME', 'tensor_to_real_array' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION real_array(tensor) IS
    'cast tensor -> real[]: the same values, the shape becomes the array''s dimensions (at most 6, the limit of arrays)';
CREATE CAST (real[] AS tensor) WITH FUNCTION tensor(real[]) AS ASSIGNMENT;
CREATE CAST (tensor AS real[]) WITH FUNCTION real_array(tensor) AS ASSIGNMENT;
COMMENT ON CAST (real[] AS tensor) IS 'the array''s dimensions become the shape (function tensor(real[]))';
COMMENT ON CAST (tensor AS real[]) IS 'the shape becomes the array''s dimensions (function real_array(tensor))';

-- Raw little-endian float32 bytes <-> tensor (the original pg_llm BYTEA form).
CREATE FUNCTION tensor(bytea) RETURNS tensor
    AS 'MODULE_PATHNAME', 'tensor_from_bytea_flat' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION tensor(bytea) IS
    'cast bytea -> tensor: raw little-endian float32 values (4 bytes each) -> a 1-D tensor [length / 4]';
CREATE FUNCTION llm_bytea(tensor) RETURNS bytea
    AS 'MODULE_PATHNAME', 'tensor_to_bytea_fn' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION llm_bytea(tensor) IS
    'cast tensor -> bytea: the values row-major as raw little-endian float32 (4 bytes each); the shape is dropped';
CREATE CAST (bytea AS tensor) WITH FUNCTION tensor(bytea);
CREATE CAST (tensor AS bytea) WITH FUNCTION llm_bytea(tensor);
COMMENT ON CAST (bytea AS tensor) IS 'raw little-endian float32 values -> a 1-D tensor (function tensor(bytea))';
COMMENT ON CAST (tensor AS bytea) IS 'the values as raw little-endian float32, shape dropped (function llm_bytea(tensor))';

-- Constructors with an explicit shape.
CREATE FUNCTION llm_tensor(vals real[], shape int[]) RETURNS tensor
    AS 'MODULE_PATHNAME', 'tensor_from_real_array_shape' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION llm_tensor(real[], int[]) IS
    'a tensor of the given shape filled row-major with vals (read flat, whatever its dimensions); their count must equal the product of shape';
CREATE FUNCTION llm_tensor(raw bytea, shape int[]) RETURNS tensor
    AS 'MODULE_PATHNAME', 'tensor_from_bytea_shape' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION llm_tensor(bytea, int[]) IS
    'a tensor of the given shape from raw little-endian float32 bytes, row-major; raw must hold 4 * product(shape) bytes';

CREATE FUNCTION llm_shape(tensor) RETURNS int[]
    AS 'MODULE_PATHNAME', 'tensor_shape' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION llm_shape(tensor) IS
    'the shape of a tensor as int[], e.g. {2,3} for [[1,2,3],[4,5,6]]; reads only the header of a stored value';

-- What the kernels run with: SIMD instruction set, threads, cores.
CREATE FUNCTION llm_info_text() RETURNS text
    AS 'MODULE_PATHNAME', 'llm_info' LANGUAGE C STABLE;
COMMENT ON FUNCTION llm_info_text() IS
    'llm_info() as JSON text: {"version", "simd", "threads", "cores"}';
CREATE FUNCTION llm_info() RETURNS jsonb
    SET search_path = pg_catalog, @extschema@, pg_temp
    AS 'SELECT llm_info_text()::jsonb' LANGUAGE SQL STABLE;
COMMENT ON FUNCTION llm_info() IS
    'what the kernels run with: version, simd (the best the CPU has, capped by pg_llm.simd), threads (pg_llm.threads), cores';

-- pg_llm: the tensor type.
-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION pg_llm" to load this file. \quit

-- An n-dimensional float32 array (1 to 8 dimensions), row-major.
--   SELECT '[[1,2,3],[4,5,6]]'::tensor;
CREATE TYPE tensor;

CREATE FUNCTION tensor_in(cstring) RETURNS tensor
    AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION tensor_out(tensor) RETURNS cstring
    AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION tensor_recv(internal) RETURNS tensor
    AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION tensor_send(tensor) RETURNS bytea
    AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

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
CREATE FUNCTION real_array(tensor) RETURNS real[]
    AS 'MODULE_PATHNAME', 'tensor_to_real_array' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE CAST (real[] AS tensor) WITH FUNCTION tensor(real[]) AS ASSIGNMENT;
CREATE CAST (tensor AS real[]) WITH FUNCTION real_array(tensor) AS ASSIGNMENT;

-- Raw little-endian float32 bytes <-> tensor (the original pg_llm BYTEA form).
CREATE FUNCTION tensor(bytea) RETURNS tensor
    AS 'MODULE_PATHNAME', 'tensor_from_bytea_flat' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION llm_bytea(tensor) RETURNS bytea
    AS 'MODULE_PATHNAME', 'tensor_to_bytea_fn' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE CAST (bytea AS tensor) WITH FUNCTION tensor(bytea);
CREATE CAST (tensor AS bytea) WITH FUNCTION llm_bytea(tensor);

-- Constructors with an explicit shape.
CREATE FUNCTION llm_tensor(vals real[], shape int[]) RETURNS tensor
    AS 'MODULE_PATHNAME', 'tensor_from_real_array_shape' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION llm_tensor(raw bytea, shape int[]) RETURNS tensor
    AS 'MODULE_PATHNAME', 'tensor_from_bytea_shape' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION llm_shape(tensor) RETURNS int[]
    AS 'MODULE_PATHNAME', 'tensor_shape' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- What the kernels run with: SIMD instruction set, threads, cores.
CREATE FUNCTION llm_info_text() RETURNS text
    AS 'MODULE_PATHNAME', 'llm_info' LANGUAGE C STABLE;
CREATE FUNCTION llm_info() RETURNS jsonb
    SET search_path = pg_catalog, @extschema@, pg_temp
    AS 'SELECT llm_info_text()::jsonb' LANGUAGE SQL STABLE;

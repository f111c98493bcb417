/*
 * op_list.h -- every op the autograd tape knows, once.
 *
 *   TAPE_OP(KIND, name, arity, sql_arguments)
 *
 * KIND           the tape's enum value TAPE_OP_<KIND> (tape.h)
 * name           the SQL function llm_<name>, its C function llm_<name>_sql
 *                and its tape methods tape_<name> (attributes and backward),
 *                both in ops/ops.c
 * arity          its tensor inputs
 * sql_arguments  the argument types of CREATE FUNCTION llm_<name> in
 *                sql/10_ops.sql, as its COMMENT ON names them; NULL for an op
 *                only the GPT-2 forward records (no SQL function of its own)
 *
 * tape.h (the enum, the tape_<name> declarations) and op_table.c (the op
 * table) expand this list; tests/test_op_recipe.py reads it and names each
 * place a new op is missing from (extension/src/README.md, "Adding an op").
 */
#ifndef PG_LLM_AUTOGRAD_OP_LIST_H
#define PG_LLM_AUTOGRAD_OP_LIST_H

#define TAPE_OPS(TAPE_OP) \
	TAPE_OP(MATMUL, matmul, 2, "tensor, tensor, boolean, boolean") \
	TAPE_OP(ADD, add, 2, "tensor, tensor") \
	TAPE_OP(MUL, mul, 2, "tensor, tensor") \
	TAPE_OP(SCALE, scale, 1, "tensor, double precision") \
	TAPE_OP(TRANSPOSE, transpose, 1, "tensor") \
	TAPE_OP(RESHAPE, reshape, 1, "tensor, int[]") \
	TAPE_OP(SLICE, slice, 1, "tensor, int, int") \
	TAPE_OP(GELU, gelu, 1, "tensor") \
	TAPE_OP(SOFTMAX, softmax, 1, "tensor, boolean") \
	TAPE_OP(LAYERNORM, layernorm, 3, "tensor, tensor, tensor, real") \
	TAPE_OP(EMBEDDING, embedding, 1, "tensor, int[]") \
	TAPE_OP(CROSS_ENTROPY, cross_entropy, 1, "tensor, int[]") \
	TAPE_OP(ATTENTION, attention, 3, "tensor, tensor, tensor, int, boolean") \
	TAPE_OP(ATTENTION_QKV, attention_qkv, 1, NULL)

#endif							/* PG_LLM_AUTOGRAD_OP_LIST_H */

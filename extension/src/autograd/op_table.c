/*
 * op_table.c -- the ops the tape knows, indexed by TapeOpKind: each op's SQL
 * name and arity from op_list.h, and its methods (tape.h), which ops/ops.c
 * defines beside the op's SQL function.  autograd/ includes nothing of ops/
 * (tests/test_layout.py: no include cycle between folders): tape.h declares
 * the tape_<name> objects and the linker finds them.
 */
#include "postgres.h"

#include "autograd/tape.h"

#define TAPE_OP_ROW(KIND, name, arity, sql_arguments) \
	[TAPE_OP_##KIND] = {"llm_" #name, arity, &tape_##name},
const TapeOpInfo tape_ops[TAPE_OP_COUNT] = {
	TAPE_OPS(TAPE_OP_ROW)
};

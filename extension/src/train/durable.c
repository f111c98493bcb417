/*
 * durable.c -- commits that survive a crash (see durable.h).
 */
#include "postgres.h"

#include "access/xact.h"
#include "fmgr.h"
#include "utils/guc.h"

#include "train/durable.h"

void
llm_commit_durably(void)
{
	if (synchronous_commit == SYNCHRONOUS_COMMIT_OFF)
		(void) set_config_option("synchronous_commit", "on", PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_LOCAL, true, 0, false);
}

/* llm_commit_durably() RETURNS void */
PG_FUNCTION_INFO_V1(llm_commit_durably_sql);
Datum
llm_commit_durably_sql(PG_FUNCTION_ARGS)
{
	llm_commit_durably();
	PG_RETURN_VOID();
}

/*
 * prompt.c -- text prompts to token ids that fit the model, stop ids, and
 * text between the database encoding and UTF-8 (see prompt.h).
 *
 * A prompt longer than the context leaves room for max_tokens by dropping
 * its oldest tokens (a NOTICE says how many): the model continues the end
 * of the text, which is what a prompt longer than the window can give.
 */
#include "postgres.h"

#include "mb/pg_wchar.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "gpt2/forward.h"
#include "generate/generate.h"
#include "generate/prompt.h"
#include "tensor/tensor.h"

char *
text_to_utf8(text *t, int *len)
{
	char	   *server = text_to_cstring(t);
	char	   *utf8 = pg_server_to_any(server, strlen(server), PG_UTF8);

	*len = strlen(utf8);
	return utf8;
}

text *
utf8_to_text(const char *utf8, int len)
{
	char	   *server = pg_any_to_server(utf8, len, PG_UTF8);

	return cstring_to_text_with_len(server, server == utf8 ? len : (int) strlen(server));
}

int32 *
prompt_ids(const char *who, const LlmTokenizer *tok, const Gpt2Model *m, text *prompt,
		   int max_tokens, int *n)
{
	int			len;
	char	   *utf8 = text_to_utf8(prompt, &len);
	int32	   *ids = llm_bpe_encode(tok, utf8, len, false, n);
	int			room = m->cfg.n_positions - max_tokens;

	if (max_tokens < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: max_tokens must be >= 1, got %d", who, max_tokens)));
	if (room < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: max_tokens must be below the context of model \"%s\" (n_positions = %d), got %d",
						who, m->name, m->cfg.n_positions, max_tokens),
				 errhint("The prompt needs at least one position.")));
	if (*n == 0)
	{
		int32		eot = llm_tokenizer_eot_id(tok);

		if (eot < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s: the prompt is empty and tokenizer \"%s\" has no <|endoftext|> to start from",
							who, llm_tokenizer_model(tok))));
		ids = palloc(sizeof(int32));
		ids[0] = eot;
		*n = 1;
	}
	if (*n > room)
	{
		ereport(NOTICE,
				(errmsg("%s: the prompt has %d tokens; kept its last %d so that %d new tokens fit in the context of model \"%s\" (n_positions = %d)",
						who, *n, room, max_tokens, m->name, m->cfg.n_positions)));
		memmove(ids, ids + (*n - room), sizeof(int32) * room);
		*n = room;
	}
	return ids;
}

int32 *
stop_ids_or_eot(FunctionCallInfo fcinfo, int argno, const char *who,
				const LlmTokenizer *tok, const Gpt2Model *m, int *n)
{
	int32	   *ids;

	if (!PG_ARGISNULL(argno))
		return int_array_values(who, "stop_ids", PG_GETARG_ARRAYTYPE_P(argno), 1, n);
	ids = palloc(sizeof(int32));
	ids[0] = llm_tokenizer_eot_id(tok);
	*n = ids[0] >= 0 && ids[0] < m->cfg.vocab_size ? 1 : 0;
	return ids;
}

void
check_decodable(const char *who, const LlmTokenizer *tok, const Gpt2Model *m, int32 id)
{
	if (id >= llm_tokenizer_vocab_size(tok))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: model \"%s\" wrote token id %d, which tokenizer \"%s\" has no text for (vocabulary 0..%d)",
						who, m->name, id, llm_tokenizer_model(tok), llm_tokenizer_vocab_size(tok) - 1)));
}

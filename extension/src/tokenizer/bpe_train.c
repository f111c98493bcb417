/*
 * bpe_train.c -- llm_bpe_train(model, corpus, vocab_size): learn a byte-level
 * BPE from text in the database, as HuggingFace tokenizers' BpeTrainer does
 * with a ByteLevel pre-tokenizer and initial_alphabet = ByteLevel.alphabet().
 *
 *   1. Count words: the pieces of GPT-2's pre-tokenizer, as byte strings.
 *   2. Tokens 0..255 are the bytes, in the byte-level alphabet's order.
 *   3. Count adjacent pairs over all words (times each word's count), and
 *      remember which words hold each pair.
 *   4. Repeatedly merge the most frequent pair into a new token, in the
 *      words that hold it, updating only the counts of the pairs around
 *      each merge (incremental counts, a priority queue with lazy updates).
 *   5. Append <|endoftext|> as the last id, and write llm_bpe_vocab and
 *      llm_bpe_merges in GPT-2's format.
 *
 * Ties: of pairs with the same count, the one with the smaller (left id,
 * right id) merges first -- HF's order, so both learn the same merges.  The
 * queue holds, like HF's, each pair with the words it was found in; an
 * entry whose count is stale goes back with its current count.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "portability/instr_time.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "tokenizer/bpe_tables.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/hash.h"
#include "tokenizer/pretokenize.h"

#define EOT_TOKEN "<|endoftext|>"
#define PROGRESS_SECONDS 10.0

/* ---- growable lists and maps ------------------------------------------- */

typedef struct IntList
{
	int32	   *items;
	int			n;
	int			capacity;
} IntList;

static void
list_add(IntList *l, int32 v)
{
	if (l->n == l->capacity)
	{
		l->capacity = l->capacity ? l->capacity * 2 : 4;
		l->items = l->items ? repalloc_huge(l->items, sizeof(int32) * l->capacity)
			: palloc(sizeof(int32) * l->capacity);
	}
	l->items[l->n++] = v;
}

/* byte string -> int64 (a count, or an id); keys copied into one arena. */
typedef struct BytesMap
{
	uint32	   *slots;			/* entry + 1, 0 if free */
	uint32		mask;
	int			n;
	uint64	   *hash;
	int64	   *value;
	uint32	   *off;			/* key of entry i: arena[off[i] .. off[i + 1]) */
	int			capacity;
	StringInfoData arena;
} BytesMap;

static void
bytes_map_init(BytesMap *m)
{
	m->mask = 1023;
	m->slots = palloc0(sizeof(uint32) * (m->mask + 1));
	m->n = 0;
	m->capacity = 512;
	m->hash = palloc(sizeof(uint64) * m->capacity);
	m->value = palloc(sizeof(int64) * m->capacity);
	m->off = palloc(sizeof(uint32) * (m->capacity + 1));
	m->off[0] = 0;
	initStringInfo(&m->arena);
}

static inline const unsigned char *
bytes_key(const BytesMap *m, int i, int *len)
{
	*len = (int) (m->off[i + 1] - m->off[i]);
	return (const unsigned char *) m->arena.data + m->off[i];
}

static void
bytes_map_grow(BytesMap *m)
{
	uint32		slots = (m->mask + 1) * 2;

	m->mask = slots - 1;
	pfree(m->slots);
	m->slots = palloc0(sizeof(uint32) * slots);
	for (int i = 0; i < m->n; i++)
	{
		uint32		s = (uint32) m->hash[i] & m->mask;

		while (m->slots[s] != 0)
			s = (s + 1) & m->mask;
		m->slots[s] = (uint32) i + 1;
	}
}

/* The entry of key p[0..len), added with value `initial` if new. */
static int
bytes_map_entry(BytesMap *m, const unsigned char *p, int len, int64 initial)
{
	uint64		h = llm_hash_bytes(p, len);
	uint32		s = (uint32) h & m->mask;
	int			i;

	for (;; s = (s + 1) & m->mask)
	{
		int			klen;
		const unsigned char *k;

		if (m->slots[s] == 0)
			break;
		i = (int) m->slots[s] - 1;
		k = bytes_key(m, i, &klen);
		if (m->hash[i] == h && klen == len && memcmp(k, p, len) == 0)
			return i;
	}
	if (m->n == m->capacity)
	{
		m->capacity *= 2;
		m->hash = repalloc_huge(m->hash, sizeof(uint64) * m->capacity);
		m->value = repalloc_huge(m->value, sizeof(int64) * m->capacity);
		m->off = repalloc_huge(m->off, sizeof(uint32) * (m->capacity + 1));
	}
	if ((uint64) m->arena.len + len > MaxAllocSize / 2)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("llm_bpe_train: the corpus has more than %d MB of distinct words",
						(int) (MaxAllocSize / 2 >> 20))));
	i = m->n++;
	m->hash[i] = h;
	m->value[i] = initial;
	appendBinaryStringInfo(&m->arena, (const char *) p, len);
	m->off[i + 1] = (uint32) m->arena.len;
	m->slots[s] = (uint32) i + 1;
	if ((uint32) m->n * 2 > m->mask)
		bytes_map_grow(m);
	return i;
}

/* (left id, right id) -> count, and the words that gained the pair this round. */
typedef struct PairSlot
{
	uint64		key;			/* llm_pair_key, or PAIR_FREE */
	int64		count;
	uint32		round;			/* `touched` is valid in this round only */
	int32		touched;		/* index into Trainer.touched */
	bool		recorded;		/* merged already: in the merges list */
} PairSlot;

#define PAIR_FREE PG_UINT64_MAX

typedef struct PairMap
{
	PairSlot   *slots;
	uint32		mask;
	uint32		used;
} PairMap;

static void
pair_map_init(PairMap *m, uint32 slots)
{
	m->mask = slots - 1;
	m->used = 0;
	m->slots = palloc_extended(sizeof(PairSlot) * slots, MCXT_ALLOC_HUGE);
	for (uint32 i = 0; i < slots; i++)
		m->slots[i].key = PAIR_FREE;
}

static PairSlot *
pair_slot(PairMap *m, uint64 key)
{
	uint32		i = (uint32) llm_hash_u64(key) & m->mask;

	for (;; i = (i + 1) & m->mask)
	{
		PairSlot   *s = &m->slots[i];

		if (s->key == key)
			return s;
		if (s->key == PAIR_FREE)
		{
			if ((m->used + 1) * 2 > m->mask)
			{
				PairMap		bigger;

				pair_map_init(&bigger, (m->mask + 1) * 2);
				for (uint32 j = 0; j <= m->mask; j++)
					if (m->slots[j].key != PAIR_FREE)
					{
						PairSlot   *t = pair_slot(&bigger, m->slots[j].key);

						*t = m->slots[j];
					}
				pfree(m->slots);
				*m = bigger;
				return pair_slot(m, key);
			}
			s->key = key;
			s->count = 0;
			s->round = 0;
			s->touched = -1;
			s->recorded = false;
			m->used++;
			return s;
		}
	}
}

/* ---- the trainer ---------------------------------------------------------- */

/* A candidate merge: the pair, its count when queued, the words holding it. */
typedef struct Candidate
{
	int64		count;
	int32		left;
	int32		right;
	IntList		words;
} Candidate;

typedef struct Trainer
{
	BytesMap	word_counts;	/* word bytes -> count */

	/* the words as token ids, all in one array */
	int32	   *syms;
	int64	   *word_off;
	int32	   *word_len;
	int64	   *word_count;
	int			n_words;

	/* tokens: their bytes, and bytes -> id */
	BytesMap	tokens;

	PairMap		pairs;
	uint32		round;
	Candidate  *touched;		/* pairs that gained words this round */
	int			n_touched;
	int			touched_capacity;

	Candidate  *heap;
	int			n_heap;
	int			heap_capacity;

	IntList		merge_left;
	IntList		merge_right;
} Trainer;

/* Max-heap: higher count first, then the smaller pair (HF's order). */
static inline bool
comes_first(const Candidate *a, const Candidate *b)
{
	if (a->count != b->count)
		return a->count > b->count;
	if (a->left != b->left)
		return a->left < b->left;
	return a->right < b->right;
}

static void
heap_push(Trainer *t, Candidate c)
{
	int			i;

	if (t->n_heap == t->heap_capacity)
	{
		t->heap_capacity *= 2;
		t->heap = repalloc_huge(t->heap, sizeof(Candidate) * t->heap_capacity);
	}
	i = t->n_heap++;
	while (i > 0 && comes_first(&c, &t->heap[(i - 1) / 2]))
	{
		t->heap[i] = t->heap[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	t->heap[i] = c;
}

static Candidate
heap_pop(Trainer *t)
{
	Candidate	top = t->heap[0];
	Candidate	last = t->heap[--t->n_heap];
	int			i = 0;

	for (;;)
	{
		int			child = 2 * i + 1;

		if (child >= t->n_heap)
			break;
		if (child + 1 < t->n_heap && comes_first(&t->heap[child + 1], &t->heap[child]))
			child++;
		if (!comes_first(&t->heap[child], &last))
			break;
		t->heap[i] = t->heap[child];
		i = child;
	}
	if (t->n_heap > 0)
		t->heap[i] = last;
	return top;
}

/* Add `delta` occurrences of pair (a, b) in word w; a gain marks w for it. */
static void
count_pair(Trainer *t, int32 a, int32 b, int64 delta, int32 w)
{
	PairSlot   *s = pair_slot(&t->pairs, llm_pair_key(a, b));
	Candidate  *c;

	s->count += delta;
	if (delta <= 0)
		return;
	if (s->round != t->round || s->touched < 0)
	{
		if (t->n_touched == t->touched_capacity)
		{
			t->touched_capacity *= 2;
			t->touched = repalloc_huge(t->touched, sizeof(Candidate) * t->touched_capacity);
		}
		s->round = t->round;
		s->touched = t->n_touched++;
		c = &t->touched[s->touched];
		c->left = a;
		c->right = b;
		memset(&c->words, 0, sizeof(IntList));
	}
	c = &t->touched[s->touched];
	if (c->words.n == 0 || c->words.items[c->words.n - 1] != w)
		list_add(&c->words, w);
}

/* Queue the pairs that gained words this round (HF: where_to_update). */
static void
queue_touched(Trainer *t)
{
	for (int i = 0; i < t->n_touched; i++)
	{
		Candidate	c = t->touched[i];
		PairSlot   *s = pair_slot(&t->pairs, llm_pair_key(c.left, c.right));

		s->touched = -1;
		if (s->count > 0)
		{
			c.count = s->count;
			heap_push(t, c);
		}
		else if (c.words.items)
			pfree(c.words.items);
	}
	t->n_touched = 0;
	t->round++;
}

/* ---- 1. counting words -------------------------------------------------- */

static void
count_words(Trainer *t, const char *s, size_t len)
{
	const unsigned char *u = (const unsigned char *) s;
	size_t		pos = 0;

	while (pos < len)
	{
		size_t		n = llm_gpt2_piece_len(u + pos, len - pos);
		int			word;

		if (n > PG_INT32_MAX / 4)
			n = PG_INT32_MAX / 4;
		word = bytes_map_entry(&t->word_counts, u + pos, (int) n, 0);	/* may move .value */
		t->word_counts.value[word]++;
		pos += n;
	}
}

static void
count_text(Trainer *t, text *value)
{
	const char *s = VARDATA_ANY(value);
	int			len = VARSIZE_ANY_EXHDR(value);
	const char *utf8 = pg_server_to_any(s, len, PG_UTF8);

	count_words(t, utf8, utf8 == s ? (size_t) len : strlen(utf8));
	if (utf8 != s)
		pfree((char *) utf8);
}

/* text, varchar, char(n), or a domain over one: all stored as text is. */
static bool
is_text_type(Oid type)
{
	Oid			base = getBaseType(type);

	return base == TEXTOID || base == VARCHAROID || base == BPCHAROID;
}

/* Every row of the query's one text column. */
static void
count_query(Trainer *t, const char *query)
{
	SPIPlanPtr	plan;
	Portal		portal;

	SPI_connect();
	plan = SPI_prepare(query, 0, NULL);
	if (plan == NULL)
		elog(ERROR, "llm_bpe_train: could not prepare corpus_query: %s",
			 SPI_result_code_string(SPI_result));
	if (!SPI_is_cursor_plan(plan))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_bpe_train: corpus_query must be a SELECT (or VALUES) returning one text column"),
				 errdetail("It was: %s", query)));
	portal = SPI_cursor_open(NULL, plan, NULL, NULL, true);
	for (;;)
	{
		TupleDesc	desc;

		SPI_cursor_fetch(portal, true, 1000);
		if (SPI_processed == 0)
			break;
		desc = SPI_tuptable->tupdesc;
		if (desc->natts != 1 || !is_text_type(SPI_gettypeid(desc, 1)))
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("llm_bpe_train: corpus_query must return one text column, not %d column(s) of %s",
							desc->natts, format_type_be(SPI_gettypeid(desc, 1))),
					 errhint("Cast it: SELECT line::text FROM ...")));
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			bool		isnull;
			Datum		d = SPI_getbinval(SPI_tuptable->vals[i], desc, 1, &isnull);

			if (!isnull)
				count_text(t, DatumGetTextPP(d));
		}
		SPI_freetuptable(SPI_tuptable);
		CHECK_FOR_INTERRUPTS();
	}
	SPI_cursor_close(portal);
	SPI_finish();
}

/* ---- 2.-3. tokens and pairs ---------------------------------------------- */

static void
start_tokens_and_pairs(Trainer *t)
{
	int64		total = 0;

	bytes_map_init(&t->tokens);
	for (int r = 0; r < 256; r++)
	{
		unsigned char b = llm_alphabet_byte(r);

		bytes_map_entry(&t->tokens, &b, 1, r);
	}

	t->n_words = t->word_counts.n;
	for (int w = 0; w < t->n_words; w++)
		total += t->word_counts.off[w + 1] - t->word_counts.off[w];
	t->syms = palloc_extended(sizeof(int32) * Max(total, 1), MCXT_ALLOC_HUGE);
	t->word_off = palloc_extended(sizeof(int64) * Max(t->n_words, 1), MCXT_ALLOC_HUGE);
	t->word_len = palloc_extended(sizeof(int32) * Max(t->n_words, 1), MCXT_ALLOC_HUGE);
	t->word_count = palloc_extended(sizeof(int64) * Max(t->n_words, 1), MCXT_ALLOC_HUGE);

	pair_map_init(&t->pairs, 1 << 16);
	t->round = 1;
	t->touched_capacity = 1024;
	t->touched = palloc(sizeof(Candidate) * t->touched_capacity);
	t->n_touched = 0;

	total = 0;
	for (int w = 0; w < t->n_words; w++)
	{
		int			len;
		const unsigned char *p = bytes_key(&t->word_counts, w, &len);
		int32	   *sym = t->syms + total;

		t->word_off[w] = total;
		t->word_len[w] = len;
		t->word_count[w] = t->word_counts.value[w];
		for (int i = 0; i < len; i++)
			sym[i] = llm_byte_rank(p[i]);
		for (int i = 0; i + 1 < len; i++)
			count_pair(t, sym[i], sym[i + 1], t->word_count[w], w);
		total += len;
		if ((w & 0x3FFF) == 0)
			CHECK_FOR_INTERRUPTS();
	}

	t->heap_capacity = Max(t->n_touched, 1024);
	t->heap = palloc_extended(sizeof(Candidate) * t->heap_capacity, MCXT_ALLOC_HUGE);
	t->n_heap = 0;
	queue_touched(t);
}

/* ---- 4. merging ------------------------------------------------------------ */

/* Merge every (a, b) in word w into `merged`, left to right (HF's Word::merge). */
static void
merge_word(Trainer *t, int32 w, int32 a, int32 b, int32 merged)
{
	int32	   *sym = t->syms + t->word_off[w];
	int			len = t->word_len[w];
	int64		count = t->word_count[w];

	for (int i = 0; i < len; i++)
	{
		if (sym[i] != a || i + 1 >= len || sym[i + 1] != b)
			continue;
		if (i > 0)
		{
			count_pair(t, sym[i - 1], a, -count, w);
			count_pair(t, sym[i - 1], merged, count, w);
		}
		sym[i] = merged;
		memmove(&sym[i + 1], &sym[i + 2], sizeof(int32) * (len - i - 2));
		len--;
		if (i < len - 1)
		{
			count_pair(t, b, sym[i + 1], -count, w);
			count_pair(t, merged, sym[i + 1], count, w);
		}
	}
	t->word_len[w] = len;
}

/* The id of the token a + b, a new one if it is new. */
static int32
merged_token(Trainer *t, int32 a, int32 b)
{
	int			la,
				lb;
	const unsigned char *pa = bytes_key(&t->tokens, a, &la);
	const unsigned char *pb = bytes_key(&t->tokens, b, &lb);
	unsigned char *joined = palloc(la + lb);
	int			i;

	memcpy(joined, pa, la);
	memcpy(joined + la, pb, lb);
	i = bytes_map_entry(&t->tokens, joined, la + lb, -1);
	if (t->tokens.value[i] < 0)
		t->tokens.value[i] = i; /* new: ids are entry numbers */
	pfree(joined);
	return (int32) t->tokens.value[i];
}

static void
learn_merges(Trainer *t, int target)
{
	instr_time	start,
				now;
	double		last_notice = 0;

	INSTR_TIME_SET_CURRENT(start);
	while (t->tokens.n < target && t->n_heap > 0)
	{
		Candidate	top = heap_pop(t);
		PairSlot   *s = pair_slot(&t->pairs, llm_pair_key(top.left, top.right));
		int32		merged;

		if (top.count != s->count)
		{
			top.count = s->count;	/* stale: back in the queue */
			heap_push(t, top);
			continue;
		}
		if (top.count < 1)
			break;

		/*
		 * HF records a merge again if its pair comes back through a token
		 * that two merges make; a merge table holds each pair once.
		 */
		if (!s->recorded)
		{
			s->recorded = true;
			list_add(&t->merge_left, top.left);
			list_add(&t->merge_right, top.right);
		}
		merged = merged_token(t, top.left, top.right);
		for (int i = 0; i < top.words.n; i++)
			merge_word(t, top.words.items[i], top.left, top.right, merged);
		if (top.words.items)
			pfree(top.words.items);
		queue_touched(t);

		CHECK_FOR_INTERRUPTS();
		INSTR_TIME_SET_CURRENT(now);
		INSTR_TIME_SUBTRACT(now, start);
		if (INSTR_TIME_GET_DOUBLE(now) - last_notice >= PROGRESS_SECONDS)
		{
			last_notice = INSTR_TIME_GET_DOUBLE(now);
			ereport(NOTICE,
					(errmsg("llm_bpe_train: %d of %d tokens after %.0f s",
							t->tokens.n + 1, target + 1, last_notice)));
		}
	}
}

/* ---- 5. the result ---------------------------------------------------------- */

/* Token i's text: its bytes in the byte-level alphabet. */
static char *
token_text(Trainer *t, int32 id)
{
	int			len;
	const unsigned char *p = bytes_key(&t->tokens, id, &len);
	StringInfoData out;

	initStringInfo(&out);
	llm_bytes_token(&out, p, len);
	return out.data;
}

static int
store(Trainer *t, const char *model)
{
	int			n_vocab = t->tokens.n + 1;
	int			n_merges = t->merge_left.n;
	char	  **tokens = palloc_extended(sizeof(char *) * n_vocab, MCXT_ALLOC_HUGE);
	char	  **left = palloc_extended(sizeof(char *) * Max(n_merges, 1), MCXT_ALLOC_HUGE);
	char	  **right = palloc_extended(sizeof(char *) * Max(n_merges, 1), MCXT_ALLOC_HUGE);

	for (int i = 0; i < t->tokens.n; i++)
		tokens[i] = token_text(t, i);
	tokens[t->tokens.n] = EOT_TOKEN;
	for (int i = 0; i < n_merges; i++)
	{
		left[i] = tokens[t->merge_left.items[i]];
		right[i] = tokens[t->merge_right.items[i]];
	}
	llm_store_vocab(model, tokens, n_vocab);
	llm_store_merges(model, left, right, n_merges);
	return n_vocab;
}

static int
train(const char *model, int vocab_size, void (*count) (Trainer *t, void *arg), void *arg)
{
	MemoryContext mcxt = AllocSetContextCreate(CurrentMemoryContext, "llm_bpe_train",
											   ALLOCSET_DEFAULT_SIZES);
	MemoryContext old = MemoryContextSwitchTo(mcxt);
	Trainer    *t = palloc0(sizeof(Trainer));
	int			n_vocab;

	if (vocab_size < 257)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_bpe_train: vocab_size must be at least 257 (256 bytes and <|endoftext|>), got %d",
						vocab_size)));
	bytes_map_init(&t->word_counts);
	count(t, arg);
	start_tokens_and_pairs(t);
	learn_merges(t, vocab_size - 1);	/* the last id is <|endoftext|> */
	if (t->tokens.n + 1 < vocab_size)
		ereport(NOTICE,
				(errmsg("llm_bpe_train: the corpus has no more pairs to merge: %d tokens, not %d",
						t->tokens.n + 1, vocab_size)));

	MemoryContextSwitchTo(old);
	n_vocab = store(t, model);
	MemoryContextDelete(mcxt);
	return n_vocab;
}

static void
count_query_arg(Trainer *t, void *arg)
{
	count_query(t, (const char *) arg);
}

static void
count_array_arg(Trainer *t, void *arg)
{
	ArrayType  *corpus = (ArrayType *) arg;
	ArrayIterator it = array_create_iterator(corpus, 0, NULL);
	Datum		value;
	bool		isnull;
	int			i = 0;

	while (array_iterate(it, &value, &isnull))
	{
		if (!isnull)
			count_text(t, DatumGetTextPP(value));
		if ((++i & 0x3FF) == 0)
			CHECK_FOR_INTERRUPTS();
	}
	array_free_iterator(it);
}

/* llm_bpe_train(model text, corpus_query text, vocab_size int) RETURNS int */
PG_FUNCTION_INFO_V1(llm_bpe_train_query);
Datum
llm_bpe_train_query(PG_FUNCTION_ARGS)
{
	char	   *model = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *query = text_to_cstring(PG_GETARG_TEXT_PP(1));

	PG_RETURN_INT32(train(model, PG_GETARG_INT32(2), count_query_arg, query));
}

/* llm_bpe_train(model text, corpus text[], vocab_size int) RETURNS int */
PG_FUNCTION_INFO_V1(llm_bpe_train_array);
Datum
llm_bpe_train_array(PG_FUNCTION_ARGS)
{
	char	   *model = text_to_cstring(PG_GETARG_TEXT_PP(0));

	PG_RETURN_INT32(train(model, PG_GETARG_INT32(2), count_array_arg, PG_GETARG_ARRAYTYPE_P(1)));
}

/*
 * bpe.c -- byte-level BPE: text to token ids and back (see tokenizer.h).
 *
 * Encoding is GPT-2's, as HuggingFace tokenizers and tiktoken compute it:
 *
 *   1. the pre-tokenizer cuts the text into pieces (pretokenize.c);
 *   2. each piece starts as one token per byte;
 *   3. BPE merges the adjacent pair of lowest merge rank, the leftmost of
 *      equal ones, until no adjacent pair has a rank.
 *
 * Step 3 on a short piece is a scan for the lowest rank after each merge
 * (ranks of unchanged pairs are kept, as tiktoken does); on a long piece
 * (kilobytes without a space) a heap of candidate merges keeps it
 * O(n log n).  Encoded pieces are kept in a cache: a text repeats few
 * distinct pieces.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "utils/memutils.h"

#include "tensor/tensor.h"
#include "tokenizer/bpe.h"
#include "tokenizer/hash.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/utf8.h"

/* Pieces of at most this many bytes take the simple scan. */
#define SHORT_PIECE 128

/* ---- merge ranks --------------------------------------------------------- */

void
llm_merge_table_init(LlmMergeTable *t, int n)
{
	uint32		slots = 16;

	while (slots < (uint32) n * 2)
		slots <<= 1;
	t->mask = slots - 1;
	t->keys = palloc(sizeof(uint64) * slots);
	t->ranks = palloc(sizeof(int32) * slots);
	t->merged = palloc(sizeof(int32) * slots);
	memset(t->keys, 0xFF, sizeof(uint64) * slots);	/* MERGE_EMPTY */
}

bool
llm_merge_table_add(LlmMergeTable *t, int32 left, int32 right, int32 rank, int32 merged)
{
	uint64		key = llm_pair_key(left, right);
	uint32		i = (uint32) llm_hash_u64(key) & t->mask;

	while (t->keys[i] != MERGE_EMPTY)
	{
		if (t->keys[i] == key)
			return false;
		i = (i + 1) & t->mask;
	}
	t->keys[i] = key;
	t->ranks[i] = rank;
	t->merged[i] = merged;
	return true;
}

/* The rank of merging left and right (NO_MERGE if none), and the merged id. */
static inline int32
merge_rank(const LlmMergeTable *t, int32 left, int32 right, int32 *merged)
{
	uint64		key = llm_pair_key(left, right);
	uint32		i = (uint32) llm_hash_u64(key) & t->mask;

	for (;;)
	{
		uint64		k = t->keys[i];

		if (k == key)
		{
			*merged = t->merged[i];
			return t->ranks[i];
		}
		if (k == MERGE_EMPTY)
			return NO_MERGE;
		i = (i + 1) & t->mask;
	}
}

/* ---- growing output ------------------------------------------------------ */

typedef struct IdBuffer
{
	int32	   *ids;
	int			n;
	int			capacity;
} IdBuffer;

static void
ids_reserve(IdBuffer *buf, int more)
{
	if ((int64) buf->n + more > buf->capacity)
	{
		int64		want = Max((int64) buf->capacity * 2, (int64) buf->n + more);

		if (want > (int64) MaxArraySize)
			want = Max((int64) MaxArraySize, (int64) buf->n + more);
		if ((int64) buf->n + more > (int64) MaxArraySize)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("llm_encode: the text has more than %d tokens, the most an array holds",
							(int) MaxArraySize)));
		buf->ids = repalloc_huge(buf->ids, sizeof(int32) * want);
		buf->capacity = (int) want;
	}
}

/* ---- BPE on one piece ---------------------------------------------------- */

/* Short pieces: scan for the lowest rank after every merge. */
static int
bpe_short(const LlmTokenizer *tok, const unsigned char *p, int n, int32 *ids)
{
	int32		ranks[SHORT_PIECE];
	int32		merged[SHORT_PIECE];

	for (int i = 0; i < n; i++)
		ids[i] = tok->byte_id[p[i]];
	for (int i = 0; i + 1 < n; i++)
		ranks[i] = merge_rank(&tok->merges, ids[i], ids[i + 1], &merged[i]);

	while (n > 1)
	{
		int32		best = NO_MERGE;
		int			at = -1;

		for (int i = 0; i + 1 < n; i++)
			if (ranks[i] < best)
				best = ranks[i], at = i;
		if (at < 0)
			break;

		/* ids[at], ids[at + 1] -> merged[at]; pair `at + 1` goes away */
		ids[at] = merged[at];
		n--;
		memmove(&ids[at + 1], &ids[at + 2], sizeof(int32) * (n - at - 1));
		if (at + 1 < n)
		{
			memmove(&ranks[at + 1], &ranks[at + 2], sizeof(int32) * (n - at - 2));
			memmove(&merged[at + 1], &merged[at + 2], sizeof(int32) * (n - at - 2));
		}
		if (at > 0)
			ranks[at - 1] = merge_rank(&tok->merges, ids[at - 1], ids[at], &merged[at - 1]);
		if (at + 1 < n)
			ranks[at] = merge_rank(&tok->merges, ids[at], ids[at + 1], &merged[at]);
	}
	return n;
}

/* A candidate merge of the symbol at `pos` with the next one. */
typedef struct Candidate
{
	int32		rank;
	int32		pos;			/* the left symbol's first byte: leftmost first */
} Candidate;

static inline bool
candidate_before(Candidate a, Candidate b)
{
	return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos);
}

static void
heap_push(Candidate *heap, int *n, Candidate c)
{
	int			i = (*n)++;

	while (i > 0 && candidate_before(c, heap[(i - 1) / 2]))
	{
		heap[i] = heap[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	heap[i] = c;
}

static Candidate
heap_pop(Candidate *heap, int *n)
{
	Candidate	top = heap[0];
	Candidate	last = heap[--(*n)];
	int			i = 0;

	for (;;)
	{
		int			child = 2 * i + 1;

		if (child >= *n)
			break;
		if (child + 1 < *n && candidate_before(heap[child + 1], heap[child]))
			child++;
		if (!candidate_before(heap[child], last))
			break;
		heap[i] = heap[child];
		i = child;
	}
	if (*n > 0)
		heap[i] = last;
	return top;
}

/*
 * Long pieces: symbols in a linked list (indexed by their first byte), and
 * a heap of candidate merges.  A popped candidate is stale if its symbol
 * has been merged away or its pair changed; the lowest valid one is the
 * same merge the scan would pick.
 */
static int
bpe_long(const LlmTokenizer *tok, const unsigned char *p, int n, int32 *ids)
{
	int32	   *sym = palloc_extended(sizeof(int32) * n, MCXT_ALLOC_HUGE);
	int		   *next = palloc_extended(sizeof(int) * n, MCXT_ALLOC_HUGE);
	int		   *prev = palloc_extended(sizeof(int) * n, MCXT_ALLOC_HUGE);
	bool	   *alive = palloc_extended(sizeof(bool) * n, MCXT_ALLOC_HUGE);
	/* n - 1 candidates, then at most 2 a merge */
	Candidate  *heap = palloc_extended(sizeof(Candidate) * 3 * (Size) n, MCXT_ALLOC_HUGE);
	int			n_heap = 0;
	int			count = 0;
	int32		merged = -1;

	for (int i = 0; i < n; i++)
	{
		sym[i] = tok->byte_id[p[i]];
		next[i] = i + 1 < n ? i + 1 : -1;
		prev[i] = i - 1;
		alive[i] = true;
	}
	for (int i = 0; i + 1 < n; i++)
	{
		int32		rank = merge_rank(&tok->merges, sym[i], sym[i + 1], &merged);

		if (rank != NO_MERGE)
			heap_push(heap, &n_heap, (Candidate) {rank, i});
	}

	while (n_heap > 0)
	{
		Candidate	c = heap_pop(heap, &n_heap);
		int			right = next[c.pos];
		int32		rank;

		if ((count++ & 0xFFFF) == 0)
			CHECK_FOR_INTERRUPTS();
		if (!alive[c.pos] || right < 0)
			continue;
		rank = merge_rank(&tok->merges, sym[c.pos], sym[right], &merged);
		if (rank != c.rank)
			continue;			/* the pair changed since */

		sym[c.pos] = merged;
		alive[right] = false;
		next[c.pos] = next[right];
		if (next[right] >= 0)
			prev[next[right]] = c.pos;

		if (prev[c.pos] >= 0)
		{
			rank = merge_rank(&tok->merges, sym[prev[c.pos]], sym[c.pos], &merged);
			if (rank != NO_MERGE)
				heap_push(heap, &n_heap, (Candidate) {rank, prev[c.pos]});
		}
		if (next[c.pos] >= 0)
		{
			rank = merge_rank(&tok->merges, sym[c.pos], sym[next[c.pos]], &merged);
			if (rank != NO_MERGE)
				heap_push(heap, &n_heap, (Candidate) {rank, c.pos});
		}
	}

	count = 0;
	for (int i = 0; i >= 0; i = next[i])
		ids[count++] = sym[i];
	pfree(sym);
	pfree(next);
	pfree(prev);
	pfree(alive);
	pfree(heap);
	return count;
}

/* ---- the cache of encoded pieces -------------------------------------- */

static void
word_cache_reset(LlmWordCache *c)
{
	memset(c->slots, 0, sizeof(uint32) * WORD_CACHE_SLOTS);
	c->n_entries = 0;
	c->keys_used = 0;
	c->ids_used = 0;
}

static void
word_cache_allocate(LlmTokenizer *tok)
{
	LlmWordCache *c = &tok->words;

	c->slots = MemoryContextAlloc(tok->mcxt, sizeof(uint32) * WORD_CACHE_SLOTS);
	c->entries = MemoryContextAlloc(tok->mcxt, sizeof(LlmWordEntry) * WORD_CACHE_ENTRIES);
	c->keys = MemoryContextAlloc(tok->mcxt, WORD_CACHE_KEY_BYTES);
	c->ids = MemoryContextAlloc(tok->mcxt, sizeof(int32) * WORD_CACHE_IDS);
	word_cache_reset(c);
}

/* The cached ids of piece p (*n_ids of them), or NULL; *slot is where to add it. */
static const int32 *
word_cache_find(const LlmWordCache *c, const unsigned char *p, int n, uint64 hash,
				int *n_ids, uint32 *slot)
{
	uint32		i = (uint32) (hash >> 40) & (WORD_CACHE_SLOTS - 1);

	for (;; i = (i + 1) & (WORD_CACHE_SLOTS - 1))
	{
		const LlmWordEntry *e;

		if (c->slots[i] == 0)
		{
			*slot = i;
			return NULL;
		}
		e = &c->entries[c->slots[i] - 1];
		if (e->hash == hash && e->key_len == n && memcmp(c->keys + e->key_off, p, n) == 0)
		{
			*n_ids = e->n_ids;
			return c->ids + e->ids_off;
		}
	}
}

static void
word_cache_add(LlmWordCache *c, uint32 slot, const unsigned char *p, int n, uint64 hash,
			   const int32 *ids, int n_ids)
{
	LlmWordEntry *e;

	if (c->n_entries >= WORD_CACHE_ENTRIES || c->keys_used + n > WORD_CACHE_KEY_BYTES ||
		c->ids_used + n_ids > WORD_CACHE_IDS)
	{
		/* full: start afresh, and find the slot again in the empty table */
		word_cache_reset(c);
		slot = (uint32) (hash >> 40) & (WORD_CACHE_SLOTS - 1);
	}
	e = &c->entries[c->n_entries];
	e->hash = hash;
	e->key_off = c->keys_used;
	e->key_len = (uint16) n;
	e->ids_off = c->ids_used;
	e->n_ids = (uint16) n_ids;
	memcpy(c->keys + c->keys_used, p, n);
	memcpy(c->ids + c->ids_used, ids, sizeof(int32) * n_ids);
	c->keys_used += n;
	c->ids_used += n_ids;
	c->slots[slot] = ++c->n_entries;
}

/* ---- encoding ------------------------------------------------------------- */

static void
encode_piece(LlmTokenizer *tok, const unsigned char *p, int n, IdBuffer *out)
{
	LlmWordCache *cache = &tok->words;
	const int32 *cached;
	uint64		hash = 0;
	uint32		slot = 0;
	int			n_ids;

	if (n == 1)
	{
		ids_reserve(out, 1);
		out->ids[out->n++] = tok->byte_id[p[0]];
		return;
	}
	if (n <= WORD_CACHE_MAX_PIECE)
	{
		hash = llm_hash_bytes(p, n);
		cached = word_cache_find(cache, p, n, hash, &n_ids, &slot);
		if (cached != NULL)
		{
			ids_reserve(out, n_ids);
			memcpy(out->ids + out->n, cached, sizeof(int32) * n_ids);
			out->n += n_ids;
			return;
		}
	}

	ids_reserve(out, n);		/* a piece never has more tokens than bytes */
	if (n <= SHORT_PIECE)
		n_ids = bpe_short(tok, p, n, out->ids + out->n);
	else
		n_ids = bpe_long(tok, p, n, out->ids + out->n);
	if (n <= WORD_CACHE_MAX_PIECE)
		word_cache_add(cache, slot, p, n, hash, out->ids + out->n, n_ids);
	out->n += n_ids;
}

/* Ordinary text (no special tokens): pre-tokenize, then BPE each piece. */
static void
encode_ordinary(LlmTokenizer *tok, const unsigned char *s, size_t len, IdBuffer *out)
{
	size_t		pos = 0;
	size_t		next_check = 1 << 16;

	while (pos < len)
	{
		size_t		n = llm_gpt2_piece_len(s + pos, len - pos);

		encode_piece(tok, s + pos, (int) n, out);
		pos += n;
		if (pos >= next_check)
		{
			CHECK_FOR_INTERRUPTS();
			next_check = pos + (1 << 16);
		}
	}
}

/* Where needle (n > 0 bytes) first occurs in s[0..len), or -1. */
static int64
find_bytes(const unsigned char *s, size_t len, const unsigned char *needle, size_t n)
{
	for (size_t i = 0; i + n <= len; i++)
	{
		const unsigned char *hit = memchr(s + i, needle[0], len - n + 1 - i);

		if (hit == NULL)
			return -1;
		i = hit - s;
		if (memcmp(hit, needle, n) == 0)
			return (int64) i;
	}
	return -1;
}

/* The first special token in s[0..len), at *at; -1 if none. */
static int32
find_special(const LlmTokenizer *tok, const unsigned char *s, size_t len, size_t *at)
{
	int32		found = -1;
	size_t		best_at = len;
	int			best_len = 0;

	for (int k = 0; k < tok->n_special; k++)
	{
		int32		id = tok->special_ids[k];
		const unsigned char *tb = tok->bytes + tok->offsets[id];
		int			tn = (int) (tok->offsets[id + 1] - tok->offsets[id]);
		int64		hit;

		if (tn == 0 || (size_t) tn > len)
			continue;
		hit = find_bytes(s, Min(len, best_at + tn), tb, tn);
		if (hit < 0)
			continue;
		/* the earliest; at the same place the longest */
		if ((size_t) hit < best_at || ((size_t) hit == best_at && tn > best_len))
		{
			best_at = (size_t) hit;
			best_len = tn;
			found = id;
		}
	}
	*at = best_at;
	return found;
}

int32 *
llm_bpe_encode(const LlmTokenizer *ctok, const char *utf8, size_t len, bool allow_special,
			   int *n_ids)
{
	LlmTokenizer *tok = (LlmTokenizer *) ctok;	/* the cache of pieces changes */
	const unsigned char *s = (const unsigned char *) utf8;
	IdBuffer	out;

	if (tok->words.slots == NULL)
		word_cache_allocate(tok);
	out.capacity = (int) Min(Max(len / 3, 16), (size_t) MaxArraySize);
	out.ids = palloc_extended(sizeof(int32) * out.capacity, MCXT_ALLOC_HUGE);
	out.n = 0;

	while (len > 0)
	{
		size_t		at = len;
		int32		special = allow_special ? find_special(tok, s, len, &at) : -1;

		encode_ordinary(tok, s, at, &out);
		if (special < 0)
			break;
		ids_reserve(&out, 1);
		out.ids[out.n++] = special;
		at += tok->offsets[special + 1] - tok->offsets[special];
		s += at;
		len -= at;
	}
	*n_ids = out.n;
	return out.ids;
}

/* ---- decoding ------------------------------------------------------------- */

void
llm_bpe_check_ids(const LlmTokenizer *tok, const char *who, const int32 *ids, int n)
{
	check_token_ids(who, "token id", ids, n, tok->n_vocab, false,
					psprintf(" of tokenizer \"%s\"", tok->model));
}

const unsigned char *
llm_bpe_token_bytes(const LlmTokenizer *tok, int32 id, int *len)
{
	*len = (int) (tok->offsets[id + 1] - tok->offsets[id]);
	return tok->bytes + tok->offsets[id];
}

void
llm_bpe_decode_bytes(const LlmTokenizer *tok, const int32 *ids, int n, StringInfo out)
{
	llm_bpe_check_ids(tok, "llm_decode", ids, n);
	for (int i = 0; i < n; i++)
	{
		int			len;
		const unsigned char *b = llm_bpe_token_bytes(tok, ids[i], &len);

		appendBinaryStringInfo(out, (const char *) b, len);
	}
}

void
llm_bpe_decode_text(const LlmTokenizer *tok, const int32 *ids, int n, StringInfo out)
{
	StringInfoData raw;

	initStringInfo(&raw);
	llm_bpe_decode_bytes(tok, ids, n, &raw);
	llm_utf8_append_lossy(out, (const unsigned char *) raw.data, raw.len, true);
	pfree(raw.data);
}

void
llm_bpe_stream_init(LlmBpeStream *s, const LlmTokenizer *tok)
{
	s->tok = tok;
	s->n_pending = 0;
}

void
llm_bpe_stream_push(LlmBpeStream *s, int32 id, StringInfo out)
{
	int			len;
	const unsigned char *b;
	unsigned char *joined;
	size_t		used;

	llm_bpe_check_ids(s->tok, "llm_decode", &id, 1);
	b = llm_bpe_token_bytes(s->tok, id, &len);
	if (s->n_pending == 0)
	{
		joined = (unsigned char *) b;
		used = llm_utf8_append_lossy(out, b, len, false);
	}
	else
	{
		joined = palloc(s->n_pending + len);
		memcpy(joined, s->pending, s->n_pending);
		memcpy(joined + s->n_pending, b, len);
		len += s->n_pending;
		used = llm_utf8_append_lossy(out, joined, len, false);
	}
	/* what is left is the start of one character: at most 3 bytes */
	Assert(len - used <= 3);
	s->n_pending = (int) (len - used);
	memcpy(s->pending, joined + used, s->n_pending);
	if (joined != b)
		pfree(joined);
}

void
llm_bpe_stream_finish(LlmBpeStream *s, StringInfo out)
{
	llm_utf8_append_lossy(out, s->pending, s->n_pending, true);
	s->n_pending = 0;
}

/* ---- accessors ------------------------------------------------------------ */

const char *
llm_tokenizer_model(const LlmTokenizer *tok)
{
	return tok->model;
}

int
llm_tokenizer_vocab_size(const LlmTokenizer *tok)
{
	return tok->n_vocab;
}

int
llm_tokenizer_merges(const LlmTokenizer *tok)
{
	return tok->n_merges;
}

int32
llm_tokenizer_eot_id(const LlmTokenizer *tok)
{
	return tok->eot_id;
}

const int32 *
llm_tokenizer_special_ids(const LlmTokenizer *tok, int *n)
{
	*n = tok->n_special;
	return tok->special_ids;
}

int64
llm_tokenizer_version(const LlmTokenizer *tok)
{
	return tok->version;
}

/*
 * bpe.h -- inside the tokenizer: the data llm_tokenizer_get() builds
 * (tokenizer_cache.c) and the BPE encoder works on (bpe.c).
 */
#ifndef PG_LLM_BPE_H
#define PG_LLM_BPE_H

#include "postgres.h"

#include "tokenizer/tokenizer.h"

/*
 * The merge ranks: (left id, right id) -> (rank, id of the merged token),
 * open addressing with linear probing.  A hash of the pair, not a scan of
 * merges.txt: BPE looks a pair up for every step of every word.
 */
typedef struct LlmMergeTable
{
	uint64	   *keys;			/* llm_pair_key(left, right), or MERGE_EMPTY */
	int32	   *ranks;
	int32	   *merged;
	uint32		mask;			/* slots - 1 (a power of two minus one) */
} LlmMergeTable;

#define MERGE_EMPTY PG_UINT64_MAX
#define NO_MERGE PG_INT32_MAX	/* the rank of a pair that never merges */

/*
 * Pieces of text already encoded (" the" -> [262]): most words come back
 * again and again.  Bounded; emptied when full.
 */
#define WORD_CACHE_SLOTS (1 << 17)
#define WORD_CACHE_ENTRIES (WORD_CACHE_SLOTS / 2)
#define WORD_CACHE_KEY_BYTES (1 << 20)
#define WORD_CACHE_IDS (1 << 18)
#define WORD_CACHE_MAX_PIECE 64 /* longer pieces are encoded every time */

typedef struct LlmWordEntry
{
	uint64		hash;
	uint32		key_off;		/* in keys */
	uint32		ids_off;		/* in ids */
	uint16		key_len;
	uint16		n_ids;
} LlmWordEntry;

typedef struct LlmWordCache
{
	uint32	   *slots;			/* entry index + 1, 0 if free */
	LlmWordEntry *entries;
	uint32		n_entries;
	unsigned char *keys;
	uint32		keys_used;
	int32	   *ids;
	uint32		ids_used;
} LlmWordCache;

struct LlmTokenizer
{
	MemoryContext mcxt;			/* everything below lives here */
	char	   *model;
	Oid			relid;			/* llm_tokenizer's OID: part of the cache key */
	int64		version;		/* llm_tokenizer.version */

	int32		n_vocab;		/* ids are 0 .. n_vocab - 1 */
	int32		n_merges;
	uint32	   *offsets;		/* token i's bytes: bytes[offsets[i] .. offsets[i + 1]) */
	unsigned char *bytes;

	int32		byte_id[256];	/* the token of each single byte */
	LlmMergeTable merges;

	int			n_special;		/* tokens BPE never makes: <|endoftext|> */
	int32	   *special_ids;
	int32		eot_id;			/* <|endoftext|>, or -1 */

	LlmWordCache words;			/* allocated on first use */
};

/* Make room for n merges, then add them one by one (rank order not needed). */
extern void llm_merge_table_init(LlmMergeTable *t, int n);
/* False if the pair is there already. */
extern bool llm_merge_table_add(LlmMergeTable *t, int32 left, int32 right,
								int32 rank, int32 merged);

#endif							/* PG_LLM_BPE_H */

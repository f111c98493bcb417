/*
 * pretokenize.c -- GPT-2's pre-tokenizer pattern, matched by hand (see
 * pretokenize.h).  No PostgreSQL header.
 */
#include "tokenizer/pretokenize.h"

#include "tokenizer/unicode_tables.h"

/* The classes of the ASCII characters, for the common case. */
static const uint8_t ascii_class[128] = {
	['\t'] = LLM_CHAR_SPACE, ['\n'] = LLM_CHAR_SPACE, ['\v'] = LLM_CHAR_SPACE,
	['\f'] = LLM_CHAR_SPACE, ['\r'] = LLM_CHAR_SPACE, [' '] = LLM_CHAR_SPACE,
	['0'... '9'] = LLM_CHAR_NUMBER,
	['A'... 'Z'] = LLM_CHAR_LETTER,
	['a'... 'z'] = LLM_CHAR_LETTER,
};

LlmCharClass
llm_char_class(uint32_t cp)
{
	int			lo = 0,
				hi = LLM_N_CHAR_RANGES - 1;

	if (cp < 128)
		return (LlmCharClass) ascii_class[cp];
	while (lo <= hi)
	{
		int			mid = (lo + hi) / 2;

		if (cp < llm_char_ranges[mid].lo)
			hi = mid - 1;
		else if (cp > llm_char_ranges[mid].hi)
			lo = mid + 1;
		else
			return (LlmCharClass) llm_char_ranges[mid].cls;
	}
	return LLM_CHAR_OTHER;
}

/* A character: its class and its length in bytes. */
typedef struct Char
{
	LlmCharClass cls;
	size_t		width;
} Char;

static inline Char
make_char(LlmCharClass cls, size_t width)
{
	Char		c = {cls, width};

	return c;
}

/*
 * The character at s (len >= 1).  Invalid or truncated UTF-8 counts as one
 * byte of class "other" (PostgreSQL's text is valid UTF-8; C callers may
 * pass anything).
 */
static inline Char
char_at(const unsigned char *s, size_t len)
{
	unsigned char b = s[0];
	uint32_t	cp;
	size_t		width;
	uint32_t	min;

	if (b < 0x80)
		return make_char((LlmCharClass) ascii_class[b], 1);
	if (b >= 0xC2 && b <= 0xDF)
		width = 2, cp = b & 0x1F, min = 0x80;
	else if (b >= 0xE0 && b <= 0xEF)
		width = 3, cp = b & 0x0F, min = 0x800;
	else if (b >= 0xF0 && b <= 0xF4)
		width = 4, cp = b & 0x07, min = 0x10000;
	else
		return make_char(LLM_CHAR_OTHER, 1);
	if (width > len)
		return make_char(LLM_CHAR_OTHER, 1);
	for (size_t i = 1; i < width; i++)
	{
		if ((s[i] & 0xC0) != 0x80)
			return make_char(LLM_CHAR_OTHER, 1);
		cp = cp << 6 | (s[i] & 0x3F);
	}
	if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
		return make_char(LLM_CHAR_OTHER, 1);
	return make_char(llm_char_class(cp), width);
}

/* The end of the run of characters of class cls that starts at `pos`. */
static inline size_t
run_end(const unsigned char *s, size_t len, size_t pos, LlmCharClass cls)
{
	while (pos < len)
	{
		Char		c = char_at(s + pos, len - pos);

		if (c.cls != cls)
			break;
		pos += c.width;
	}
	return pos;
}

/* 's 't 're 've 'm 'll 'd (lower case only, as in the pattern): its length, or 0. */
static inline size_t
contraction_len(const unsigned char *s, size_t len)
{
	if (len < 2 || s[0] != '\'')
		return 0;
	switch (s[1])
	{
		case 's':
		case 't':
		case 'm':
		case 'd':
			return 2;
		case 'r':
		case 'v':
			return len >= 3 && s[2] == 'e' ? 3 : 0;
		case 'l':
			return len >= 3 && s[2] == 'l' ? 3 : 0;
	}
	return 0;
}

size_t
llm_gpt2_piece_len(const unsigned char *s, size_t len)
{
	Char		first = char_at(s, len);
	size_t		n;
	size_t		last_start;
	size_t		pos;

	/* 's|'t|'re|'ve|'m|'ll|'d */
	if ((n = contraction_len(s, len)) > 0)
		return n;

	/* " ?\p{L}+", " ?\p{N}+", " ?[^\s\p{L}\p{N}]+": an optional space, then a run */
	if (s[0] == ' ' && len > 1)
	{
		Char		next = char_at(s + 1, len - 1);

		if (next.cls != LLM_CHAR_SPACE)
			return run_end(s, len, 1, next.cls);
	}
	if (first.cls != LLM_CHAR_SPACE)
		return run_end(s, len, 0, first.cls);

	/*
	 * "\s+(?!\S)": the whitespace run, but not its last character when a
	 * non-space follows (the regex backtracks one character, so that the
	 * last space can start the next piece, " word").  "\s+": a single
	 * whitespace character before a non-space.
	 */
	pos = 0;
	last_start = 0;
	while (pos < len)
	{
		Char		c = char_at(s + pos, len - pos);

		if (c.cls != LLM_CHAR_SPACE)
			break;
		last_start = pos;
		pos += c.width;
	}
	if (pos < len && last_start > 0)
		return last_start;
	return pos;
}

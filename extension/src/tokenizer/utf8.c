/*
 * utf8.c -- UTF-8 checks and lossy decoding (see utf8.h).
 */
#include "postgres.h"

#include "tokenizer/utf8.h"

size_t
llm_utf8_sequence(const unsigned char *s, size_t len, bool *ok, bool *truncated)
{
	unsigned char b = s[0];
	size_t		need;			/* continuation bytes */
	unsigned char lo = 0x80,	/* the range of the first continuation byte */
				hi = 0xBF;

	*ok = false;
	*truncated = false;
	if (b < 0x80)
		need = 0;
	else if (b >= 0xC2 && b <= 0xDF)
		need = 1;
	else if (b == 0xE0)
		need = 2, lo = 0xA0;
	else if (b == 0xED)
		need = 2, hi = 0x9F;	/* no surrogates */
	else if (b >= 0xE1 && b <= 0xEF)
		need = 2;
	else if (b == 0xF0)
		need = 3, lo = 0x90;
	else if (b == 0xF4)
		need = 3, hi = 0x8F;	/* nothing above U+10FFFF */
	else if (b >= 0xF1 && b <= 0xF3)
		need = 3;
	else
		return 1;				/* never starts a character */

	for (size_t i = 1; i <= need; i++)
	{
		if (i >= len)
		{
			*truncated = true;
			return i;
		}
		if (s[i] < lo || s[i] > hi)
			return i;
		lo = 0x80, hi = 0xBF;
	}
	*ok = true;
	return need + 1;
}

void
llm_utf8_append_char(StringInfo buf, uint32 cp)
{
	char		out[4];
	int			n;

	if (cp < 0x80)
		out[0] = (char) cp, n = 1;
	else if (cp < 0x800)
	{
		out[0] = (char) (0xC0 | cp >> 6);
		out[1] = (char) (0x80 | (cp & 0x3F));
		n = 2;
	}
	else if (cp < 0x10000)
	{
		out[0] = (char) (0xE0 | cp >> 12);
		out[1] = (char) (0x80 | (cp >> 6 & 0x3F));
		out[2] = (char) (0x80 | (cp & 0x3F));
		n = 3;
	}
	else
	{
		out[0] = (char) (0xF0 | cp >> 18);
		out[1] = (char) (0x80 | (cp >> 12 & 0x3F));
		out[2] = (char) (0x80 | (cp >> 6 & 0x3F));
		out[3] = (char) (0x80 | (cp & 0x3F));
		n = 4;
	}
	appendBinaryStringInfo(buf, out, n);
}

size_t
llm_utf8_append_lossy(StringInfo buf, const unsigned char *s, size_t len, bool final)
{
	size_t		pos = 0;

	while (pos < len)
	{
		size_t		plain = pos;
		size_t		n;
		bool		ok,
					truncated;

		/* a stretch of ASCII without NUL goes in at once */
		while (plain < len && s[plain] < 0x80 && s[plain] != 0)
			plain++;
		if (plain > pos)
		{
			appendBinaryStringInfo(buf, (const char *) s + pos, plain - pos);
			pos = plain;
			continue;
		}

		n = llm_utf8_sequence(s + pos, len - pos, &ok, &truncated);
		if (ok && s[pos] != 0)
			appendBinaryStringInfo(buf, (const char *) s + pos, n);
		else if (truncated && !final)
			break;				/* wait for the bytes that may complete it */
		else
			llm_utf8_append_char(buf, LLM_REPLACEMENT_CHAR);
		pos += n;
	}
	return pos;
}

int64
llm_utf8_invalid_at(const unsigned char *s, size_t len)
{
	size_t		pos = 0;

	while (pos < len)
	{
		size_t		n;
		bool		ok,
					truncated;

		if (s[pos] < 0x80)
		{
			pos++;
			continue;
		}
		n = llm_utf8_sequence(s + pos, len - pos, &ok, &truncated);
		if (!ok)
			return (int64) pos;
		pos += n;
	}
	return -1;
}

/*
 * npz.c -- read NumPy's .npz files: a zip archive of .npy files.
 *
 * np.savez(path, **arrays) writes one member "<name>.npy" per array, stored
 * as is; np.savez_compressed deflates each member.  Two formats to read:
 *
 * The zip archive (PKWARE's APPNOTE.TXT), all integers little-endian:
 *
 *   [local header 1][data 1][local header 2][data 2] ...
 *   [central directory: one header per member]
 *   [zip64 end of central directory record + locator]   (big archives only)
 *   [end of central directory record]                    (the last 22 bytes,
 *                                                         plus a comment)
 *
 *   We find the end record, which says where the central directory is; the
 *   central directory gives each member's name, compression method, CRC-32,
 *   sizes, and where its local header is; the local header's length tells
 *   where the data starts.  A size or offset too big for 32 bits is written
 *   as 0xFFFFFFFF, and the real 64-bit value sits in a "zip64" extra field
 *   after the name (numpy writes that for every member).
 *
 * A .npy file (numpy/lib/format.py):
 *
 *   "\x93NUMPY" major minor   magic and format version (1.0, 2.0 or 3.0)
 *   header length             2 bytes in version 1, 4 bytes in 2 and 3
 *   header                    a Python dict literal, padded with spaces:
 *                               {'descr': '<f4', 'fortran_order': False, 'shape': (768, 2304), }
 *   data                      prod(shape) values, row-major
 *
 *   descr is the dtype: byte order ('<' little, '>' big) then kind and size
 *   ('f4' float32).  We read f2, f4 and f8, converting to float32.
 *
 * Nothing in the file is trusted: every offset and size is checked against
 * the file before use, and each member's CRC-32 is verified.
 */
#include "postgres.h"

#include <zlib.h>

#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "formats.h"

/* Signatures that start each zip record ("PK\3\4", ...). */
#define ZIP_LOCAL_SIG		0x04034b50
#define ZIP_CENTRAL_SIG		0x02014b50
#define ZIP_END_SIG			0x06054b50
#define ZIP64_END_SIG		0x06064b50
#define ZIP64_LOCATOR_SIG	0x07064b50

/* Fixed sizes of the records (names, extra fields and comments follow). */
#define ZIP_LOCAL_SIZE		30
#define ZIP_CENTRAL_SIZE	46
#define ZIP_END_SIZE		22
#define ZIP64_END_SIZE		56
#define ZIP64_LOCATOR_SIZE	20
#define ZIP_MAX_COMMENT		65535

#define ZIP_STORED			0
#define ZIP_DEFLATED		8
#define ZIP64_EXTRA_ID		0x0001
#define ZIP_32BIT_FULL		0xFFFFFFFFu /* "look in the zip64 extra field" */

/* numpy refuses headers over 10000 bytes by default; we allow more. */
#define NPY_MAX_HEADER		(1024 * 1024)
/* Compressed bytes read per step while inflating. */
#define INFLATE_CHUNK		(256 * 1024)

typedef struct NpzReader
{
	const char *who;
	const char *path;
	LlmInFile	file;
} NpzReader;

/* One member, as the central directory describes it. */
typedef struct ZipMember
{
	char	   *name;
	int			method;			/* ZIP_STORED or ZIP_DEFLATED */
	uint32		crc;			/* CRC-32 of the uncompressed bytes */
	int64		compressed_size;
	int64		size;			/* uncompressed */
	int64		header_offset;	/* of its local header */
} ZipMember;

/* ---- errors ------------------------------------------------------------------- */

/* The file breaks the zip or .npy rules: 22P03. */
llm_noreturn static void
format_error(const NpzReader *r, const char *problem)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
			 errmsg("%s: invalid .npz file \"%s\": %s", r->who, r->path, problem)));
}

/* The file was damaged (truncated, wrong checksum): XX001. */
llm_noreturn static void
corrupt_error(const NpzReader *r, const char *problem)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("%s: .npz file \"%s\" is corrupt: %s", r->who, r->path, problem)));
}

/* Valid, but not something we read: 0A000. */
llm_noreturn static void
unsupported_error(const NpzReader *r, const char *problem, const char *hint)
{
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("%s: cannot read \"%s\": %s", r->who, r->path, problem),
			 hint ? errhint("%s", hint) : 0));
}

/* A 64-bit size or offset from the file, which must lie within the file. */
static int64
checked_size(const NpzReader *r, uint64 value, const char *what)
{
	if (value > (uint64) r->file.size)
		corrupt_error(r, psprintf("%s " UINT64_FORMAT " is beyond the end of the file (" INT64_FORMAT " bytes)",
								  what, value, r->file.size));
	return (int64) value;
}

/* ---- the end of central directory record ------------------------------------------ */

/*
 * The end record is the last 22 bytes, unless the archive has a comment
 * (up to 64 kB) after it: search backwards for its signature.
 */
static int64
find_end_record(const NpzReader *r, unsigned char *end_record)
{
	int64		tail_len = Min(r->file.size, ZIP_END_SIZE + ZIP_MAX_COMMENT);
	int64		tail_start = r->file.size - tail_len;
	unsigned char *tail;

	if (r->file.size < ZIP_END_SIZE)
		format_error(r, psprintf("it has " INT64_FORMAT " bytes, too few for a zip archive", r->file.size));
	tail = palloc(tail_len);
	llm_in_read((LlmInFile *) &r->file, tail_start, tail, tail_len, "the end of the archive");
	for (int64 i = tail_len - ZIP_END_SIZE; i >= 0; i--)
	{
		if (llm_le32(tail + i) == ZIP_END_SIG &&
			i + ZIP_END_SIZE + llm_le16(tail + i + 20) <= tail_len)
		{
			memcpy(end_record, tail + i, ZIP_END_SIZE);
			pfree(tail);
			return tail_start + i;
		}
	}
	format_error(r, "no end of central directory record: not a zip archive, or truncated");
}

typedef struct ZipDirectory
{
	int64		count;			/* members */
	int64		offset;			/* where the central directory starts */
	int64		size;			/* its bytes */
} ZipDirectory;

/*
 * The zip64 end record, for archives whose member count, directory size or
 * offset does not fit the classic record.  A 20-byte locator right before
 * the classic end record says where it is.
 *
 *   locator:   0 signature   4 disk   8 offset of the zip64 end record   16 disks
 *   record:    0 signature   4 record size   12 versions   16 disk   20 directory disk
 *             24 members on this disk   32 members   40 directory size   48 directory offset
 */
static int64
read_zip64_end(const NpzReader *r, int64 end_pos, ZipDirectory *dir)
{
	unsigned char locator[ZIP64_LOCATOR_SIZE];
	unsigned char record[ZIP64_END_SIZE];
	int64		record_pos;

	if (end_pos < ZIP64_LOCATOR_SIZE)
		format_error(r, "the end record asks for zip64, but there is no zip64 locator");
	llm_in_read((LlmInFile *) &r->file, end_pos - ZIP64_LOCATOR_SIZE, locator,
				ZIP64_LOCATOR_SIZE, "the zip64 locator");
	if (llm_le32(locator) != ZIP64_LOCATOR_SIG)
		format_error(r, "the end record asks for zip64, but there is no zip64 locator");
	if (llm_le32(locator + 16) > 1)
		unsupported_error(r, "split (multi-disk) zip archives are not supported", NULL);
	record_pos = checked_size(r, llm_le64(locator + 8), "the zip64 end record offset");
	if (record_pos > end_pos - ZIP64_LOCATOR_SIZE - ZIP64_END_SIZE)
		corrupt_error(r, "the zip64 end record is not before its locator");
	llm_in_read((LlmInFile *) &r->file, record_pos, record, ZIP64_END_SIZE, "the zip64 end record");
	if (llm_le32(record) != ZIP64_END_SIG)
		corrupt_error(r, "no zip64 end record where the locator points");
	dir->count = checked_size(r, llm_le64(record + 32), "the member count");
	dir->size = checked_size(r, llm_le64(record + 40), "the central directory size");
	dir->offset = checked_size(r, llm_le64(record + 48), "the central directory offset");
	return record_pos;
}

/*
 * Where the central directory is and how many members it lists.
 *
 *   end record:  0 signature   4 disk   6 directory disk   8 members on this disk
 *               10 members    12 directory size   16 directory offset   20 comment length
 */
static ZipDirectory
read_directory_location(const NpzReader *r)
{
	unsigned char end[ZIP_END_SIZE];
	int64		end_pos = find_end_record(r, end);
	int64		directory_end = end_pos;
	ZipDirectory dir;

	dir.count = llm_le16(end + 10);
	dir.size = llm_le32(end + 12);
	dir.offset = llm_le32(end + 16);
	if (dir.count == 0xFFFF || dir.size == ZIP_32BIT_FULL || dir.offset == ZIP_32BIT_FULL)
		directory_end = read_zip64_end(r, end_pos, &dir);
	else if (llm_le16(end + 4) != 0 || llm_le16(end + 6) != 0)
		unsupported_error(r, "split (multi-disk) zip archives are not supported", NULL);

	if (dir.offset > directory_end || dir.size > directory_end - dir.offset)
		corrupt_error(r, "the central directory does not fit before the end record");
	if (dir.count > dir.size / ZIP_CENTRAL_SIZE)
		corrupt_error(r, psprintf("the central directory (" INT64_FORMAT " bytes) is too small for "
								  INT64_FORMAT " members", dir.size, dir.count));
	if (dir.size > (int64) MaxAllocSize)
		unsupported_error(r, "the central directory is over 1 GB", NULL);
	return dir;
}

/* ---- the central directory ---------------------------------------------------------- */

/* The next 64-bit value of a zip64 extra field. */
static uint64
zip64_value(const NpzReader *r, const ZipMember *m, const unsigned char *field, int field_len,
			int *used)
{
	uint64		value;

	if (*used + 8 > field_len)
		corrupt_error(r, psprintf("member \"%s\" has a short zip64 extra field", m->name));
	value = llm_le64(field + *used);
	*used += 8;
	return value;
}

/*
 * The zip64 extra field (id 0x0001) holds, in this order, the 64-bit values
 * of exactly those fields that were 0xFFFFFFFF: uncompressed size,
 * compressed size, local header offset.  Extra fields are a list of
 * (id: 2 bytes, length: 2 bytes, data).
 */
static void
read_zip64_extra(const NpzReader *r, ZipMember *m, const unsigned char *extra, int len,
				 uint32 size32, uint32 compressed32, uint32 offset32)
{
	int			pos = 0;

	while (pos + 4 <= len)
	{
		int			id = llm_le16(extra + pos);
		int			field_len = llm_le16(extra + pos + 2);
		const unsigned char *field = extra + pos + 4;
		int			used = 0;

		if (pos + 4 + field_len > len)
			corrupt_error(r, psprintf("member \"%s\" has a malformed extra field", m->name));
		if (id == ZIP64_EXTRA_ID)
		{
			if (size32 == ZIP_32BIT_FULL)
			{
				uint64		size = zip64_value(r, m, field, field_len, &used);

				if (size > (uint64) PG_INT64_MAX)
					corrupt_error(r, psprintf("member \"%s\" has an impossible size", m->name));
				m->size = (int64) size;
			}
			if (compressed32 == ZIP_32BIT_FULL)
				m->compressed_size = checked_size(r, zip64_value(r, m, field, field_len, &used),
												  "a compressed member size");
			if (offset32 == ZIP_32BIT_FULL)
				m->header_offset = checked_size(r, zip64_value(r, m, field, field_len, &used),
												"a local header offset");
		}
		pos += 4 + field_len;
	}
}

/*
 * One central directory header at dir[pos]; returns the position of the next.
 *
 *    0 signature       4 version made by    6 version needed   8 flags
 *   10 method         12 time   14 date     16 CRC-32
 *   20 compressed size   24 uncompressed size
 *   28 name length    30 extra length       32 comment length
 *   34 disk   36 internal attributes   38 external attributes
 *   42 local header offset    46 name, extra field, comment
 */
static int64
read_central_header(const NpzReader *r, const unsigned char *dir, int64 dir_size, int64 pos,
					ZipMember *m)
{
	const unsigned char *h = dir + pos;
	int			name_len,
				extra_len,
				comment_len,
				flags;
	uint32		size32,
				compressed32,
				offset32;

	if (pos + ZIP_CENTRAL_SIZE > dir_size || llm_le32(h) != ZIP_CENTRAL_SIG)
		corrupt_error(r, "a central directory header is missing or damaged");
	flags = llm_le16(h + 8);
	m->method = llm_le16(h + 10);
	m->crc = llm_le32(h + 16);
	compressed32 = llm_le32(h + 20);
	size32 = llm_le32(h + 24);
	name_len = llm_le16(h + 28);
	extra_len = llm_le16(h + 30);
	comment_len = llm_le16(h + 32);
	offset32 = llm_le32(h + 42);
	if (pos + ZIP_CENTRAL_SIZE + name_len + extra_len + comment_len > dir_size)
		corrupt_error(r, "a central directory header runs past the directory's end");
	if (name_len == 0 || memchr(h + ZIP_CENTRAL_SIZE, '\0', name_len) != NULL)
		format_error(r, "a member has an empty name or a NUL byte in its name");
	/* Names are UTF-8 (or ASCII, which numpy's names are). */
	m->name = pnstrdup((const char *) h + ZIP_CENTRAL_SIZE, name_len);
	m->name = pg_any_to_server(m->name, name_len, PG_UTF8);

	if (flags & 0x0001)
		unsupported_error(r, psprintf("member \"%s\" is encrypted", m->name), NULL);
	if (m->method != ZIP_STORED && m->method != ZIP_DEFLATED)
		unsupported_error(r, psprintf("member \"%s\" uses compression method %d", m->name, m->method),
						  "Only stored and deflated members are read, as np.savez and np.savez_compressed write them.");

	m->size = size32;
	m->compressed_size = compressed32;
	m->header_offset = offset32;
	read_zip64_extra(r, m, h + ZIP_CENTRAL_SIZE + name_len, extra_len, size32, compressed32, offset32);
	return pos + ZIP_CENTRAL_SIZE + name_len + extra_len + comment_len;
}

static ZipMember *
read_central_directory(NpzReader *r, int64 *count)
{
	ZipDirectory loc = read_directory_location(r);
	unsigned char *dir = palloc(Max(loc.size, 1));
	ZipMember  *members = palloc0(sizeof(ZipMember) * Max(loc.count, 1));
	int64		pos = 0;

	llm_in_read(&r->file, loc.offset, dir, loc.size, "the central directory");
	for (int64 i = 0; i < loc.count; i++)
	{
		pos = read_central_header(r, dir, loc.size, pos, &members[i]);
		/* The member's data lies before the central directory. */
		if (members[i].header_offset > loc.offset ||
			members[i].compressed_size > loc.offset - members[i].header_offset)
			corrupt_error(r, psprintf("member \"%s\" does not fit before the central directory",
									  members[i].name));
	}
	pfree(dir);
	*count = loc.count;
	return members;
}

/* ---- reading one member --------------------------------------------------------------- */

/* A member's uncompressed bytes, front to back (an LlmByteSource). */
typedef struct MemberStream
{
	LlmByteSource base;
	NpzReader  *r;
	ZipMember  *m;
	int64		pos;			/* file offset of the next stored/compressed byte */
	int64		compressed_left;	/* compressed bytes not yet read */
	int64		left;			/* uncompressed bytes not yet delivered */
	uint32		crc;			/* CRC-32 of the bytes delivered so far */
	z_stream	zs;				/* inflate's state (deflated members) */
	unsigned char *in;			/* inflate's input buffer */
} MemberStream;

/*
 * zlib allocates through these, in a PostgreSQL memory context: if an ERROR
 * interrupts inflating, the memory goes away with the context.
 */
static voidpf
zlib_alloc(voidpf context, uInt items, uInt size)
{
	return MemoryContextAllocExtended((MemoryContext) context, (Size) items * size,
									  MCXT_ALLOC_NO_OOM);
}

static void
zlib_free(voidpf context, voidpf address)
{
	pfree(address);
}

/* Fill buf with the next len inflated bytes. */
static void
inflate_into(MemberStream *s, void *buf, size_t len)
{
	s->zs.next_out = buf;
	s->zs.avail_out = (uInt) len;	/* len <= 1 GB: a tensor's size */
	while (s->zs.avail_out > 0)
	{
		int			rc;

		if (s->zs.avail_in == 0 && s->compressed_left > 0)
		{
			int64		n = Min(INFLATE_CHUNK, s->compressed_left);

			llm_in_read(&s->r->file, s->pos, s->in, n, psprintf("member \"%s\"", s->m->name));
			s->pos += n;
			s->compressed_left -= n;
			s->zs.next_in = s->in;
			s->zs.avail_in = (uInt) n;
		}
		rc = inflate(&s->zs, Z_NO_FLUSH);
		if (rc == Z_MEM_ERROR)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("out of memory while inflating member \"%s\"", s->m->name)));
		if (rc == Z_STREAM_END && s->zs.avail_out > 0)
			corrupt_error(s->r, psprintf("the compressed data of member \"%s\" ends early", s->m->name));
		if (rc == Z_BUF_ERROR && s->zs.avail_in == 0 && s->compressed_left == 0)
			corrupt_error(s->r, psprintf("the compressed data of member \"%s\" is truncated", s->m->name));
		if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR)
			corrupt_error(s->r, psprintf("the compressed data of member \"%s\" is damaged (zlib: %s)",
										 s->m->name, s->zs.msg ? s->zs.msg : "error"));
	}
}

static void
member_read(LlmByteSource *src, void *buf, size_t len)
{
	MemberStream *s = (MemberStream *) src;

	if ((int64) len > s->left)
		corrupt_error(s->r, psprintf("member \"%s\" (" INT64_FORMAT " bytes) ends before its array does",
									 s->m->name, s->m->size));
	if (s->m->method == ZIP_STORED)
	{
		llm_in_read(&s->r->file, s->pos, buf, len, psprintf("member \"%s\"", s->m->name));
		s->pos += len;
	}
	else
		inflate_into(s, buf, len);
	s->crc = (uint32) crc32(s->crc, buf, (uInt) len);
	s->left -= len;
}

/*
 * Start reading a member: its local header (which may differ from the
 * central directory's in the length of its extra field) says where the
 * data starts.
 *
 *    0 signature   4 version   6 flags   8 method   10 time   12 date
 *   14 CRC-32   18 compressed size   22 uncompressed size
 *   26 name length   28 extra length   30 name, extra field, data
 */
static void
member_open(NpzReader *r, ZipMember *m, MemberStream *s)
{
	unsigned char h[ZIP_LOCAL_SIZE];
	int64		data_offset;

	llm_in_read(&r->file, m->header_offset, h, ZIP_LOCAL_SIZE, psprintf("member \"%s\"", m->name));
	if (llm_le32(h) != ZIP_LOCAL_SIG)
		corrupt_error(r, psprintf("no local header where member \"%s\" should start", m->name));
	data_offset = m->header_offset + ZIP_LOCAL_SIZE + llm_le16(h + 26) + llm_le16(h + 28);
	if (data_offset > r->file.size || m->compressed_size > r->file.size - data_offset)
		corrupt_error(r, psprintf("member \"%s\" runs past the end of the file", m->name));
	if (m->method == ZIP_STORED && m->compressed_size != m->size)
		corrupt_error(r, psprintf("stored member \"%s\" has different compressed and uncompressed sizes",
								  m->name));

	memset(s, 0, sizeof(*s));
	s->base.read = member_read;
	s->r = r;
	s->m = m;
	s->pos = data_offset;
	s->compressed_left = m->compressed_size;
	s->left = m->size;
	s->crc = (uint32) crc32(0L, Z_NULL, 0);
	if (m->method == ZIP_DEFLATED)
	{
		s->in = palloc(INFLATE_CHUNK);
		s->zs.zalloc = zlib_alloc;
		s->zs.zfree = zlib_free;
		s->zs.opaque = (voidpf) CurrentMemoryContext;
		/* Negative window bits: raw deflate data, no zlib header. */
		if (inflateInit2(&s->zs, -MAX_WBITS) != Z_OK)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("could not start inflating member \"%s\"", m->name)));
	}
}

/* After the array: nothing may be left over, and the CRC-32 must match. */
static void
member_close(MemberStream *s)
{
	if (s->left != 0)
		format_error(s->r, psprintf("member \"%s\" has " INT64_FORMAT " bytes after its array",
									s->m->name, s->left));
	if (s->crc != s->m->crc)
		corrupt_error(s->r, psprintf("member \"%s\" fails its CRC-32 check (the file is damaged)",
									 s->m->name));
	if (s->m->method == ZIP_DEFLATED)
	{
		inflateEnd(&s->zs);
		pfree(s->in);
	}
}

/* ---- the .npy header --------------------------------------------------------------- */

/* What the header says about the array. */
typedef struct NpyHeader
{
	LlmFileDtype dtype;
	const char *dtype_name;		/* "F32", ..., as llm_read_safetensors says */
	bool		big_endian;
	bool		fortran_order;
	int			ndim;
	int64		dims[LLM_MAX_NDIM];
	int64		numel;
} NpyHeader;

/* A cursor over the header text: {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), } */
typedef struct DictParser
{
	const NpzReader *r;
	const char *member;
	const char *text;			/* the whole header, for messages */
	const char *p;
} DictParser;

llm_noreturn static void
header_error(const DictParser *d, const char *problem)
{
	int			len = strcspn(d->text, "\n");	/* the dict, without its padding */

	while (len > 0 && d->text[len - 1] == ' ')
		len--;
	format_error(d->r, psprintf("member \"%s\": %s in the .npy header %.*s",
								d->member, problem, len, d->text));
}

static void
skip_spaces(DictParser *d)
{
	while (*d->p == ' ' || *d->p == '\n' || *d->p == '\t' || *d->p == '\r')
		d->p++;
}

static void
expect_char(DictParser *d, char c)
{
	skip_spaces(d);
	if (*d->p != c)
		header_error(d, psprintf("expected '%c' at position %d", c, (int) (d->p - d->text)));
	d->p++;
}

/* A Python string literal without escapes: 'descr' or "descr". */
static char *
parse_py_string(DictParser *d)
{
	char		quote;
	const char *start;

	skip_spaces(d);
	quote = *d->p;
	if (quote != '\'' && quote != '"')
		header_error(d, "expected a string");
	start = ++d->p;
	while (*d->p != quote)
	{
		if (*d->p == '\0' || *d->p == '\\')
			header_error(d, "unsupported string");
		d->p++;
	}
	d->p++;
	return pnstrdup(start, d->p - 1 - start);
}

static bool
parse_py_bool(DictParser *d)
{
	skip_spaces(d);
	if (strncmp(d->p, "True", 4) == 0)
	{
		d->p += 4;
		return true;
	}
	if (strncmp(d->p, "False", 5) == 0)
	{
		d->p += 5;
		return false;
	}
	header_error(d, "expected True or False");
}

/* A tuple of dimensions: () or (5,) or (2, 3) -- a trailing comma is allowed. */
static void
parse_py_shape(DictParser *d, NpyHeader *h)
{
	expect_char(d, '(');
	h->ndim = 0;
	h->numel = 1;
	for (;;)
	{
		int64		dim = 0;
		int			digits = 0;

		skip_spaces(d);
		if (*d->p == ')')
			break;
		while (*d->p >= '0' && *d->p <= '9')
		{
			if (++digits > 10)
				header_error(d, "a dimension is too large");
			dim = dim * 10 + (*d->p++ - '0');
		}
		if (digits == 0)
			header_error(d, "expected a dimension");
		if (dim > PG_INT32_MAX)
			header_error(d, "a dimension is too large");
		if (h->ndim == LLM_MAX_NDIM)
			unsupported_error(d->r, psprintf("member \"%s\" has more than %d dimensions",
											 d->member, LLM_MAX_NDIM), NULL);
		h->dims[h->ndim++] = dim;
		if (dim > 0 && h->numel > LLM_MAX_ELEMS / dim)
			unsupported_error(d->r, psprintf("member \"%s\" is too large for a tensor", d->member), NULL);
		h->numel *= dim;
		skip_spaces(d);
		if (*d->p != ',')
			break;
		d->p++;
	}
	expect_char(d, ')');
	if (h->ndim == 0)			/* a 0-d scalar: shape [1] */
		h->dims[h->ndim++] = 1;
}

/* descr: byte order, then kind and size: '<f4' is little-endian float32. */
static void
parse_descr(DictParser *d, NpyHeader *h, const char *descr)
{
	if ((descr[0] == '<' || descr[0] == '>') && descr[1] == 'f' && descr[3] == '\0')
	{
		h->big_endian = descr[0] == '>';
		switch (descr[2])
		{
			case '2':
				h->dtype = LLM_FILE_F16;
				h->dtype_name = "F16";
				return;
			case '4':
				h->dtype = LLM_FILE_F32;
				h->dtype_name = "F32";
				return;
			case '8':
				h->dtype = LLM_FILE_F64;
				h->dtype_name = "F64";
				return;
		}
	}
	unsupported_error(d->r, psprintf("member \"%s\" has dtype '%s'", d->member, descr),
					  "Arrays of float16, float32 or float64 ('<f2', '<f4', '<f8') are read.");
}

/* The header dict: exactly the keys descr, fortran_order and shape. */
static void
parse_npy_dict(DictParser *d, NpyHeader *h)
{
	bool		seen_descr = false,
				seen_order = false,
				seen_shape = false;

	expect_char(d, '{');
	for (;;)
	{
		char	   *key;

		skip_spaces(d);
		if (*d->p == '}')
			break;
		key = parse_py_string(d);
		expect_char(d, ':');
		if (strcmp(key, "descr") == 0 && !seen_descr)
		{
			skip_spaces(d);
			if (*d->p != '\'' && *d->p != '"')
				unsupported_error(d->r, psprintf("member \"%s\" has a structured dtype", d->member), NULL);
			parse_descr(d, h, parse_py_string(d));
			seen_descr = true;
		}
		else if (strcmp(key, "fortran_order") == 0 && !seen_order)
		{
			h->fortran_order = parse_py_bool(d);
			seen_order = true;
		}
		else if (strcmp(key, "shape") == 0 && !seen_shape)
		{
			parse_py_shape(d, h);
			seen_shape = true;
		}
		else
			header_error(d, psprintf("unexpected key '%s'", key));
		skip_spaces(d);
		if (*d->p != ',')
			break;
		d->p++;
	}
	expect_char(d, '}');
	skip_spaces(d);
	if (*d->p != '\0')
		header_error(d, "junk after the dict");
	if (!seen_descr || !seen_order || !seen_shape)
		header_error(d, "a key is missing (descr, fortran_order and shape are needed)");
}

/*
 * The magic, version and header of a .npy member.  Version 1 has a 2-byte
 * header length, versions 2 and 3 a 4-byte one.
 */
static void
read_npy_header(MemberStream *s, NpyHeader *h)
{
	unsigned char magic[8];
	unsigned char len_bytes[4];
	uint32		header_len;
	char	   *text;
	DictParser	d;

	if (s->left < 10)
		format_error(s->r, psprintf("member \"%s\" is too short for a .npy file", s->m->name));
	s->base.read(&s->base, magic, 8);
	if (memcmp(magic, "\x93NUMPY", 6) != 0)
		format_error(s->r, psprintf("member \"%s\" is not a .npy file (bad magic)", s->m->name));
	if (magic[6] == 1)
	{
		s->base.read(&s->base, len_bytes, 2);
		header_len = llm_le16(len_bytes);
	}
	else if (magic[6] == 2 || magic[6] == 3)
	{
		s->base.read(&s->base, len_bytes, 4);
		header_len = llm_le32(len_bytes);
	}
	else
		unsupported_error(s->r, psprintf("member \"%s\" has .npy format version %d.%d",
										 s->m->name, magic[6], magic[7]), NULL);
	if (header_len > NPY_MAX_HEADER || header_len > s->left)
		corrupt_error(s->r, psprintf("member \"%s\" has a .npy header length of %u bytes",
									 s->m->name, header_len));

	text = palloc(header_len + 1);
	s->base.read(&s->base, text, header_len);
	text[header_len] = '\0';
	if (strlen(text) != header_len)
		format_error(s->r, psprintf("member \"%s\" has a NUL byte in its .npy header", s->m->name));

	memset(h, 0, sizeof(*h));
	d.r = s->r;
	d.member = s->m->name;
	d.text = text;
	d.p = text;
	parse_npy_dict(&d, h);
}

/* ---- llm_read_npz ------------------------------------------------------------------- */

/* "wte.weight.npy" -> "wte.weight" */
static char *
array_name(const NpzReader *r, const ZipMember *m)
{
	size_t		len = strlen(m->name);

	if (len <= 4 || strcmp(m->name + len - 4, ".npy") != 0)
		format_error(r, psprintf("member \"%s\" is not a .npy file", m->name));
	return pnstrdup(m->name, len - 4);
}

static void
read_member(FunctionCallInfo fcinfo, NpzReader *r, ZipMember *m)
{
	char	   *name = array_name(r, m);
	MemberStream s;
	NpyHeader	h;
	int64		nbytes;
	Tensor	   *t;

	member_open(r, m, &s);
	read_npy_header(&s, &h);
	if (h.fortran_order)
		unsupported_error(r, psprintf("array \"%s\" is stored in Fortran (column-major) order", name),
						  "Save np.ascontiguousarray(a) instead.");
	if (h.numel == 0)
		unsupported_error(r, psprintf("array \"%s\" has shape %s; empty tensors are not supported",
									  name, shape_str(h.ndim, h.dims)), NULL);
	nbytes = h.numel * llm_dtype_size(h.dtype);
	if (nbytes > s.left)
		corrupt_error(r, psprintf("array \"%s\" of shape %s needs " INT64_FORMAT " bytes, but member \"%s\" "
								  "has only " INT64_FORMAT " left (truncated)",
								  name, shape_str(h.ndim, h.dims), nbytes, m->name, s.left));

	t = tensor_new(h.ndim, h.dims);
	llm_read_values(&s.base, h.dtype, h.big_endian, t->data, h.numel);
	member_close(&s);
	llm_rows_add(fcinfo, name, h.dtype_name, t);
}

/*
 * llm_read_npz(path text)
 *     RETURNS TABLE (name text, dtype text, shape int[], data tensor)
 */
PG_FUNCTION_INFO_V1(llm_read_npz);
Datum
llm_read_npz(PG_FUNCTION_ARGS)
{
	NpzReader	r = {"llm_read_npz", NULL};
	ZipMember  *members;
	int64		count;

	llm_require_read_privilege(r.who);
	r.path = llm_absolute_path(r.who, PG_GETARG_TEXT_PP(0));
	llm_rows_begin(fcinfo);
	llm_in_open(&r.file, r.who, r.path);
	members = read_central_directory(&r, &count);
	for (int64 i = 0; i < count; i++)
	{
		CHECK_FOR_INTERRUPTS();
		read_member(fcinfo, &r, &members[i]);
	}
	llm_in_close(&r.file);
	return (Datum) 0;
}

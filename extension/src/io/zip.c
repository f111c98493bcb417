/*
 * zip.c -- read the members of a zip archive (the container of .npz files).
 *
 * The format (PKWARE's APPNOTE.TXT), all integers little-endian:
 *
 *   [local header 1][data 1][local header 2][data 2] ...
 *   [central directory: one header per member]
 *   [zip64 end of central directory record + locator]   (big archives only)
 *   [end of central directory record]                    (the last 22 bytes,
 *                                                         plus a comment)
 *
 * We find the end record, which says where the central directory is; the
 * central directory gives each member's name, compression method (stored,
 * or deflated: zlib's raw "inflate" undoes it), CRC-32, sizes, and where
 * its local header is; the local header's length tells where the data
 * starts.  A size or offset too big for 32 bits is written as 0xFFFFFFFF,
 * and the real 64-bit value sits in a "zip64" extra field after the name
 * (numpy writes that for every member).
 *
 * Nothing in the file is trusted: every offset and size is checked against
 * the file before use, and each member's CRC-32 is verified.
 */
#include "postgres.h"

#include "mb/pg_wchar.h"
#include "utils/memutils.h"

#include "io/zip.h"

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

#define ZIP64_EXTRA_ID		0x0001
#define ZIP_32BIT_FULL		0xFFFFFFFFu /* "look in the zip64 extra field" */

/* Compressed bytes read per step while inflating. */
#define INFLATE_CHUNK		(256 * 1024)

/* ---- errors ------------------------------------------------------------------- */

/* The file breaks the zip or .npy rules: 22P03. */
void
zip_format_error(const ZipArchive *z, const char *problem)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
			 errmsg("%s: invalid .npz file \"%s\": %s", z->who, z->path, problem)));
}

/* The file was damaged (truncated, wrong checksum): XX001. */
void
zip_corrupt_error(const ZipArchive *z, const char *problem)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("%s: .npz file \"%s\" is corrupt: %s", z->who, z->path, problem)));
}

/* Valid, but not something we read: 0A000. */
void
zip_unsupported_error(const ZipArchive *z, const char *problem, const char *hint)
{
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("%s: cannot read \"%s\": %s", z->who, z->path, problem),
			 hint ? errhint("%s", hint) : 0));
}

/* A 64-bit size or offset from the file, which must lie within the file. */
static int64
checked_size(const ZipArchive *z, uint64 value, const char *what)
{
	if (value > (uint64) z->file.size)
		zip_corrupt_error(z, psprintf("%s " UINT64_FORMAT " is beyond the end of the file (" INT64_FORMAT " bytes)",
								      what, value, z->file.size));
	return (int64) value;
}

/* ---- the end of central directory record ------------------------------------------ */

/*
 * The end record is the last 22 bytes, unless the archive has a comment
 * (up to 64 kB) after it: search backwards for its signature.
 */
static int64
find_end_record(ZipArchive *z, unsigned char *end_record)
{
	int64		tail_len = Min(z->file.size, ZIP_END_SIZE + ZIP_MAX_COMMENT);
	int64		tail_start = z->file.size - tail_len;
	unsigned char *tail;

	if (z->file.size < ZIP_END_SIZE)
		zip_format_error(z, psprintf("it has " INT64_FORMAT " bytes, too few for a zip archive", z->file.size));
	tail = palloc(tail_len);
	llm_in_read(&z->file, tail_start, tail, tail_len, "the end of the archive");
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
	zip_format_error(z, "no end of central directory record: not a zip archive, or truncated");
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
 * the classic end record says where it is.  Returns where the record
 * starts, or -1 if there is no locator (then the classic values stand).
 *
 *   locator:   0 signature   4 disk   8 offset of the zip64 end record   16 disks
 *   record:    0 signature   4 record size   12 versions   16 disk   20 directory disk
 *             24 members on this disk   32 members   40 directory size   48 directory offset
 */
static int64
read_zip64_end(ZipArchive *z, int64 end_pos, ZipDirectory *dir)
{
	unsigned char locator[ZIP64_LOCATOR_SIZE];
	unsigned char record[ZIP64_END_SIZE];
	int64		record_pos;

	if (end_pos < ZIP64_LOCATOR_SIZE)
		return -1;
	llm_in_read(&z->file, end_pos - ZIP64_LOCATOR_SIZE, locator,
				ZIP64_LOCATOR_SIZE, "the zip64 locator");
	if (llm_le32(locator) != ZIP64_LOCATOR_SIG)
		return -1;
	if (llm_le32(locator + 16) > 1)
		zip_unsupported_error(z, "split (multi-disk) zip archives are not supported", NULL);
	record_pos = checked_size(z, llm_le64(locator + 8), "the zip64 end record offset");
	if (record_pos > end_pos - ZIP64_LOCATOR_SIZE - ZIP64_END_SIZE)
		zip_corrupt_error(z, "the zip64 end record is not before its locator");
	llm_in_read(&z->file, record_pos, record, ZIP64_END_SIZE, "the zip64 end record");
	if (llm_le32(record) != ZIP64_END_SIG)
		zip_corrupt_error(z, "no zip64 end record where the locator points");
	dir->count = checked_size(z, llm_le64(record + 32), "the member count");
	dir->size = checked_size(z, llm_le64(record + 40), "the central directory size");
	dir->offset = checked_size(z, llm_le64(record + 48), "the central directory offset");
	return record_pos;
}

/*
 * Where the central directory is and how many members it lists.
 *
 *   end record:  0 signature   4 disk   6 directory disk   8 members on this disk
 *               10 members    12 directory size   16 directory offset   20 comment length
 */
static ZipDirectory
read_directory_location(ZipArchive *z)
{
	unsigned char end[ZIP_END_SIZE];
	int64		end_pos = find_end_record(z, end);
	int64		directory_end = end_pos;
	ZipDirectory dir;

	dir.count = llm_le16(end + 10);
	dir.size = llm_le32(end + 12);
	dir.offset = llm_le32(end + 16);
	/* All ones means "see the zip64 record" -- or is the true value. */
	if (dir.count == 0xFFFF || dir.size == ZIP_32BIT_FULL || dir.offset == ZIP_32BIT_FULL)
	{
		int64		zip64_pos = read_zip64_end(z, end_pos, &dir);

		if (zip64_pos >= 0)
			directory_end = zip64_pos;
	}
	if (directory_end == end_pos && (llm_le16(end + 4) != 0 || llm_le16(end + 6) != 0))
		zip_unsupported_error(z, "split (multi-disk) zip archives are not supported", NULL);

	if (dir.offset > directory_end || dir.size > directory_end - dir.offset)
		zip_corrupt_error(z, "the central directory does not fit before the end record");
	if (dir.count > dir.size / ZIP_CENTRAL_SIZE)
		zip_corrupt_error(z, psprintf("the central directory (" INT64_FORMAT " bytes) is too small for "
								      INT64_FORMAT " members", dir.size, dir.count));
	if (dir.size > (int64) MaxAllocSize)
		zip_unsupported_error(z, "the central directory is over 1 GB", NULL);
	return dir;
}

/* ---- the central directory ---------------------------------------------------------- */

/* The next 64-bit value of a zip64 extra field. */
static uint64
zip64_value(const ZipArchive *z, const ZipMember *m, const unsigned char *field, int field_len,
			int *used)
{
	uint64		value;

	if (*used + 8 > field_len)
		zip_corrupt_error(z, psprintf("member \"%s\" has a short zip64 extra field", m->name));
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
read_zip64_extra(const ZipArchive *z, ZipMember *m, const unsigned char *extra, int len,
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
			zip_corrupt_error(z, psprintf("member \"%s\" has a malformed extra field", m->name));
		if (id == ZIP64_EXTRA_ID)
		{
			if (size32 == ZIP_32BIT_FULL)
			{
				uint64		size = zip64_value(z, m, field, field_len, &used);

				if (size > (uint64) PG_INT64_MAX)
					zip_corrupt_error(z, psprintf("member \"%s\" has an impossible size", m->name));
				m->size = (int64) size;
			}
			if (compressed32 == ZIP_32BIT_FULL)
				m->compressed_size = checked_size(z, zip64_value(z, m, field, field_len, &used),
												  "a compressed member size");
			if (offset32 == ZIP_32BIT_FULL)
				m->header_offset = checked_size(z, zip64_value(z, m, field, field_len, &used),
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
read_central_header(const ZipArchive *z, const unsigned char *dir, int64 dir_size, int64 pos,
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
		zip_corrupt_error(z, "a central directory header is missing or damaged");
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
		zip_corrupt_error(z, "a central directory header runs past the directory's end");
	if (name_len == 0 || memchr(h + ZIP_CENTRAL_SIZE, '\0', name_len) != NULL)
		zip_format_error(z, "a member has an empty name or a NUL byte in its name");
	/* Names are UTF-8 (or ASCII, which numpy's names are). */
	m->name = pnstrdup((const char *) h + ZIP_CENTRAL_SIZE, name_len);
	m->name = pg_any_to_server(m->name, name_len, PG_UTF8);

	if (flags & 0x0001)
		zip_unsupported_error(z, psprintf("member \"%s\" is encrypted", m->name), NULL);
	if (m->method != ZIP_STORED && m->method != ZIP_DEFLATED)
		zip_unsupported_error(z, psprintf("member \"%s\" uses compression method %d", m->name, m->method),
						      "Only stored and deflated members are read, as np.savez and np.savez_compressed write them.");

	m->size = size32;
	m->compressed_size = compressed32;
	m->header_offset = offset32;
	read_zip64_extra(z, m, h + ZIP_CENTRAL_SIZE + name_len, extra_len, size32, compressed32, offset32);
	return pos + ZIP_CENTRAL_SIZE + name_len + extra_len + comment_len;
}

ZipMember *
zip_read_directory(ZipArchive *z, int64 *count)
{
	ZipDirectory loc = read_directory_location(z);
	unsigned char *dir = palloc(Max(loc.size, 1));
	ZipMember  *members = palloc0(sizeof(ZipMember) * Max(loc.count, 1));
	int64		pos = 0;

	llm_in_read(&z->file, loc.offset, dir, loc.size, "the central directory");
	for (int64 i = 0; i < loc.count; i++)
	{
		pos = read_central_header(z, dir, loc.size, pos, &members[i]);
		/* The member's data lies before the central directory. */
		if (members[i].header_offset > loc.offset ||
			members[i].compressed_size > loc.offset - members[i].header_offset)
			zip_corrupt_error(z, psprintf("member \"%s\" does not fit before the central directory",
									      members[i].name));
	}
	pfree(dir);
	*count = loc.count;
	return members;
}

/* ---- reading one member --------------------------------------------------------------- */

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
inflate_into(ZipStream *s, void *buf, size_t len)
{
	s->zs.next_out = buf;
	s->zs.avail_out = (uInt) len;	/* len <= 1 GB: a tensor's size */
	while (s->zs.avail_out > 0)
	{
		int			rc;

		if (s->zs.avail_in == 0 && s->compressed_left > 0)
		{
			int64		n = Min(INFLATE_CHUNK, s->compressed_left);

			llm_in_read(&s->z->file, s->pos, s->in, n, psprintf("member \"%s\"", s->m->name));
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
			zip_corrupt_error(s->z, psprintf("the compressed data of member \"%s\" ends early", s->m->name));
		if (rc == Z_BUF_ERROR && s->zs.avail_in == 0 && s->compressed_left == 0)
			zip_corrupt_error(s->z, psprintf("the compressed data of member \"%s\" is truncated", s->m->name));
		if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR)
			zip_corrupt_error(s->z, psprintf("the compressed data of member \"%s\" is damaged (zlib: %s)",
										     s->m->name, s->zs.msg ? s->zs.msg : "error"));
	}
}

static void
member_read(LlmByteSource *src, void *buf, size_t len)
{
	ZipStream *s = (ZipStream *) src;

	if ((int64) len > s->left)
		zip_corrupt_error(s->z, psprintf("member \"%s\" (" INT64_FORMAT " bytes) ends before its array does",
									     s->m->name, s->m->size));
	if (s->m->method == ZIP_STORED)
	{
		llm_in_read(&s->z->file, s->pos, buf, len, psprintf("member \"%s\"", s->m->name));
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
void
zip_open_member(ZipArchive *z, ZipMember *m, ZipStream *s)
{
	unsigned char h[ZIP_LOCAL_SIZE];
	int64		data_offset;

	llm_in_read(&z->file, m->header_offset, h, ZIP_LOCAL_SIZE, psprintf("member \"%s\"", m->name));
	if (llm_le32(h) != ZIP_LOCAL_SIG)
		zip_corrupt_error(z, psprintf("no local header where member \"%s\" should start", m->name));
	data_offset = m->header_offset + ZIP_LOCAL_SIZE + llm_le16(h + 26) + llm_le16(h + 28);
	if (data_offset > z->file.size || m->compressed_size > z->file.size - data_offset)
		zip_corrupt_error(z, psprintf("member \"%s\" runs past the end of the file", m->name));
	if (m->method == ZIP_STORED && m->compressed_size != m->size)
		zip_corrupt_error(z, psprintf("stored member \"%s\" has different compressed and uncompressed sizes",
								      m->name));

	memset(s, 0, sizeof(*s));
	s->base.read = member_read;
	s->z = z;
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
void
zip_close_member(ZipStream *s)
{
	if (s->left != 0)
		zip_format_error(s->z, psprintf("member \"%s\" has " INT64_FORMAT " bytes after its array",
									    s->m->name, s->left));
	if (s->crc != s->m->crc)
		zip_corrupt_error(s->z, psprintf("member \"%s\" fails its CRC-32 check (the file is damaged)",
									     s->m->name));
	if (s->m->method == ZIP_DEFLATED)
	{
		inflateEnd(&s->zs);
		pfree(s->in);
	}
}

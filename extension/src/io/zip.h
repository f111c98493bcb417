/*
 * zip.h -- the members of a zip archive, read as byte streams (zip.c).
 *
 * A .npz file is a zip archive; llm_read_npz (npz.c) reads its members
 * through this:
 *
 *   ZipArchive z = {who, path};
 *   llm_in_open(&z.file, who, path);
 *   members = zip_read_directory(&z, &count);
 *   zip_open_member(&z, &members[i], &stream);
 *   stream.base.read(&stream.base, buf, len);     (inflated, CRC-checked)
 *   zip_close_member(&stream);                    (all read? CRC right?)
 */
#ifndef PG_LLM_ZIP_H
#define PG_LLM_ZIP_H

#include "postgres.h"

#include <zlib.h>

#include "io/formats.h"

#define ZIP_STORED			0
#define ZIP_DEFLATED		8

/* An archive being read; who and path name it in messages. */
typedef struct ZipArchive
{
	const char *who;			/* the SQL function */
	const char *path;
	LlmInFile	file;
} ZipArchive;

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

/* A member's uncompressed bytes, front to back (an LlmByteSource). */
typedef struct ZipStream
{
	LlmByteSource base;
	ZipArchive *z;
	ZipMember  *m;
	int64		pos;			/* file offset of the next stored/compressed byte */
	int64		compressed_left;	/* compressed bytes not yet read */
	int64		left;			/* uncompressed bytes not yet delivered */
	uint32		crc;			/* CRC-32 of the bytes delivered so far */
	z_stream	zs;				/* inflate's state (deflated members) */
	unsigned char *in;			/* inflate's input buffer */
} ZipStream;

/* Errors naming the file: it breaks the rules (22P03), it was damaged
 * (XX001), or it is valid but not something we read (0A000). */
llm_noreturn extern void zip_format_error(const ZipArchive *z, const char *problem);
llm_noreturn extern void zip_corrupt_error(const ZipArchive *z, const char *problem);
llm_noreturn extern void zip_unsupported_error(const ZipArchive *z, const char *problem,
											   const char *hint);

/* The members listed in the central directory (z->file must be open). */
extern ZipMember *zip_read_directory(ZipArchive *z, int64 *count);

/* Start reading a member; then stream->base.read() delivers its bytes. */
extern void zip_open_member(ZipArchive *z, ZipMember *m, ZipStream *stream);

/* ERROR unless the member was read to its end and its CRC-32 matches. */
extern void zip_close_member(ZipStream *stream);

#endif							/* PG_LLM_ZIP_H */

/*
 * formats.c -- what every checkpoint format needs (see formats.h): privilege
 * and path checks, exact reads, float conversions, the readers' result rows,
 * atomic writes; plus llm_read_text_file() and llm_write_text_file().
 */
#include "postgres.h"

#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/tuplestore.h"

#include "io/formats.h"

/* Bytes converted per chunk when a file's dtype is not float32. */
#define CONVERT_CHUNK (64 * 1024)

/* ---- privileges and paths ----------------------------------------------- */

/*
 * The same rule as COPY ... FROM/TO a file: reading or writing arbitrary
 * server files is as powerful as being superuser, so only roles trusted
 * with it (pg_read_server_files / pg_write_server_files) may.
 */
static void
require_role(const char *who, Oid role, const char *role_name, const char *verb)
{
	if (!has_privs_of_role(GetUserId(), role))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("%s: permission denied to %s files on the server", who, verb),
				 errdetail("Only roles with privileges of the \"%s\" role may %s server files, "
						   "as with COPY to or from a file.", role_name, verb),
				 errhint("Send the data over the connection instead "
						 "(pg_llm_lab.import_hf / export_hf in Python).")));
}

void
llm_require_read_privilege(const char *who)
{
	require_role(who, ROLE_PG_READ_SERVER_FILES, "pg_read_server_files", "read");
}

void
llm_require_write_privilege(const char *who)
{
	require_role(who, ROLE_PG_WRITE_SERVER_FILES, "pg_write_server_files", "write");
}

/* A relative path would be relative to the data directory: surprising. */
char *
llm_absolute_path(const char *who, text *path)
{
	char	   *p = text_to_cstring(path);

	if (!is_absolute_path(p))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_NAME),
				 errmsg("%s: path \"%s\" is not absolute", who, p),
				 errhint("Give the full path of the file on the database server, e.g. /tmp/model.safetensors.")));
	return p;
}

/* ---- reading ------------------------------------------------------------- */

/*
 * Only regular files are read.  Opening a FIFO waits for a writer, and
 * reading a device may never end, inside system calls that neither a cancel
 * nor statement_timeout interrupts.
 */
static void
require_regular_file(const char *who, const char *path, mode_t mode)
{
	const char *kind = S_ISFIFO(mode) ? "a FIFO" :
		S_ISCHR(mode) ? "a character device" :
		S_ISBLK(mode) ? "a block device" :
		S_ISSOCK(mode) ? "a socket" : "of another kind";

	if (S_ISDIR(mode))
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("%s: \"%s\" is a directory", who, path)));
	if (!S_ISREG(mode))
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("%s: \"%s\" is not a regular file (it is %s)", who, path, kind),
				 errdetail("pg_llm reads regular files only: a FIFO or a device could keep "
						   "the server waiting forever.")));
}

void
llm_in_open(LlmInFile *f, const char *who, const char *path)
{
	struct stat st;

	f->who = who;
	f->path = path;
	f->fd = -1;
	/*
	 * Look before opening: a FIFO or a device is refused unopened.  (A
	 * symlink loop is no file either: errcode_for_file_access() would call
	 * ELOOP an internal error.)
	 */
	if (stat(path, &st) != 0)
	{
		bool		loop = errno == ELOOP;

		ereport(ERROR,
				(loop ? errcode(ERRCODE_UNDEFINED_FILE) : errcode_for_file_access(),
				 errmsg("%s: could not open file \"%s\" for reading: %m", who, path)));
	}
	require_regular_file(who, path, st.st_mode);

	/*
	 * O_NONBLOCK: should the path have become a FIFO since stat(), open()
	 * returns at once instead of waiting for a writer, and fstat() below
	 * refuses it.  (On a regular file O_NONBLOCK changes nothing.)  A
	 * transient file is closed by PostgreSQL if an ERROR aborts.
	 */
	f->fd = OpenTransientFile(path, O_RDONLY | PG_BINARY | O_NONBLOCK);
	if (f->fd < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("%s: could not open file \"%s\" for reading: %m", who, path)));
	if (fstat(f->fd, &st) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("%s: could not stat file \"%s\": %m", who, path)));
	require_regular_file(who, path, st.st_mode);
	f->size = (int64) st.st_size;
}

void
llm_in_close(LlmInFile *f)
{
	if (f->fd >= 0 && CloseTransientFile(f->fd) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("%s: could not close file \"%s\": %m", f->who, f->path)));
	f->fd = -1;
}

void
llm_in_read(LlmInFile *f, int64 offset, void *buf, size_t len, const char *what)
{
	/* Check against the size first: the message then says what is missing. */
	if (offset < 0 || offset > f->size || (int64) len > f->size - offset)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("%s: file \"%s\" is truncated", f->who, f->path),
				 errdetail("%s needs bytes " INT64_FORMAT " to " INT64_FORMAT
						   ", but the file has " INT64_FORMAT " bytes.",
						   what, offset, offset + (int64) len, f->size)));
	for (size_t done = 0; done < len;)
	{
		ssize_t		got = pread(f->fd, (char *) buf + done, len - done, (off_t) (offset + done));

		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("%s: could not read file \"%s\": %m", f->who, f->path)));
		if (got == 0)
			ereport(ERROR,		/* it shrank while we read it */
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("%s: file \"%s\" ended early while reading %s", f->who, f->path, what)));
		done += got;
	}
}

uint16
llm_le16(const unsigned char *p)
{
	return (uint16) (p[0] | p[1] << 8);
}

uint32
llm_le32(const unsigned char *p)
{
	return (uint32) p[0] | (uint32) p[1] << 8 | (uint32) p[2] << 16 | (uint32) p[3] << 24;
}

uint64
llm_le64(const unsigned char *p)
{
	return (uint64) llm_le32(p) | (uint64) llm_le32(p + 4) << 32;
}

/* ---- element types --------------------------------------------------------- */

int
llm_dtype_size(LlmFileDtype dtype)
{
	switch (dtype)
	{
		case LLM_FILE_F16:
		case LLM_FILE_BF16:
			return 2;
		case LLM_FILE_F32:
			return 4;
		case LLM_FILE_F64:
			return 8;
	}
	return 0;					/* not reached */
}

/* An unsigned integer of `size` bytes at p, in the given byte order. */
static uint64
load_uint(const unsigned char *p, int size, bool big_endian)
{
	uint64		v = 0;

	for (int i = 0; i < size; i++)
		v |= (uint64) p[big_endian ? size - 1 - i : i] << (8 * i);
	return v;
}

static float
float_from_bits(uint32 bits)
{
	float		f;

	memcpy(&f, &bits, sizeof(f));
	return f;
}

/*
 * IEEE half precision: 1 sign bit, 5 exponent bits (bias 15), 10 mantissa
 * bits.  Every half value is exactly representable as a float.
 */
static float
half_to_float(uint16 h)
{
	uint32		sign = (uint32) (h & 0x8000) << 16;
	uint32		exponent = (h >> 10) & 0x1f;
	uint32		mantissa = h & 0x3ff;

	if (exponent == 0x1f)		/* infinity or NaN */
		return float_from_bits(sign | 0x7f800000 | mantissa << 13);
	if (exponent != 0)			/* normal: re-bias the exponent 15 -> 127 */
		return float_from_bits(sign | (exponent + 127 - 15) << 23 | mantissa << 13);
	/* zero or subnormal: mantissa * 2^-24 */
	return sign ? -ldexpf((float) mantissa, -24) : ldexpf((float) mantissa, -24);
}

/* Convert n values of `dtype` at src to float32. */
static void
convert_values(LlmFileDtype dtype, bool big_endian, const unsigned char *src,
			   float *dst, int64 n)
{
	int			size = llm_dtype_size(dtype);

	for (int64 i = 0; i < n; i++)
	{
		uint64		bits = load_uint(src + i * size, size, big_endian);

		switch (dtype)
		{
			case LLM_FILE_F32:
				dst[i] = float_from_bits((uint32) bits);
				break;
			case LLM_FILE_F16:
				dst[i] = half_to_float((uint16) bits);
				break;
			case LLM_FILE_BF16:	/* bfloat16 is the top 16 bits of a float32 */
				dst[i] = float_from_bits((uint32) bits << 16);
				break;
			case LLM_FILE_F64:
				{
					double		d;

					memcpy(&d, &bits, sizeof(d));
					dst[i] = (float) d;
				}
				break;
		}
	}
}

void
llm_read_values(LlmByteSource *src, LlmFileDtype dtype, bool big_endian,
				float *dst, int64 n)
{
	int			size = llm_dtype_size(dtype);
	int64		per_chunk = CONVERT_CHUNK / size;
	unsigned char *chunk;

#ifdef WORDS_BIGENDIAN
	bool		native = big_endian;
#else
	bool		native = !big_endian;
#endif

	/* float32 in this machine's byte order: read straight into place. */
	if (dtype == LLM_FILE_F32 && native)
	{
		for (int64 done = 0; done < n; done += per_chunk * 64)
		{
			CHECK_FOR_INTERRUPTS();
			src->read(src, dst + done, Min(per_chunk * 64, n - done) * sizeof(float));
		}
		return;
	}

	chunk = palloc(CONVERT_CHUNK);
	for (int64 done = 0; done < n; done += per_chunk)
	{
		int64		count = Min(per_chunk, n - done);

		CHECK_FOR_INTERRUPTS();
		src->read(src, chunk, count * size);
		convert_values(dtype, big_endian, chunk, dst + done, count);
	}
	pfree(chunk);
}

/* ---- results of the readers ---------------------------------------------- */

void
llm_rows_begin(FunctionCallInfo fcinfo)
{
	/* A tuplestore in the query's memory; the columns from RETURNS TABLE. */
	InitMaterializedSRF(fcinfo, 0);
}

void
llm_rows_add(FunctionCallInfo fcinfo, const char *name, const char *dtype, Tensor *t)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Datum		dims[LLM_MAX_NDIM];
	Datum		values[4];
	bool		nulls[4] = {false, false, false, false};
	ArrayType  *shape;

	for (int i = 0; i < t->ndim; i++)
		dims[i] = Int32GetDatum(t->dims[i]);
	shape = construct_array(dims, t->ndim, INT4OID, sizeof(int32), true, TYPALIGN_INT);

	values[0] = CStringGetTextDatum(name);
	values[1] = CStringGetTextDatum(dtype);
	values[2] = PointerGetDatum(shape);
	values[3] = PointerGetDatum(t);
	/* The tuplestore copies the row (spilling to disk beyond work_mem)... */
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	/* ...so we free ours: one tensor in memory at a time. */
	pfree(t);
	pfree(shape);
}

/* ---- writing ------------------------------------------------------------- */

/* Create the file's directory if it is missing (its parent must exist). */
static void
ensure_directory(const char *who, const char *path)
{
	char	   *dir = pstrdup(path);
	struct stat st;

	get_parent_directory(dir);
	if (dir[0] == '\0' || stat(dir, &st) == 0)
		return;
	if (errno != ENOENT || mkdir(dir, 0777) != 0)	/* 0777 & ~umask */
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("%s: could not create directory \"%s\": %m", who, dir)));
}

/*
 * The pid in "<base>.tmp<pid>", the name of a temporary file of the target
 * <dir>/<base>; 0 if `name` is not one.
 */
static int
temporary_file_pid(const char *name, const char *base)
{
	size_t		len = strlen(base);
	const char *digits;
	char	   *end;
	long		pid;

	if (strncmp(name, base, len) != 0 || strncmp(name + len, ".tmp", 4) != 0)
		return 0;
	digits = name + len + 4;
	if (!isdigit((unsigned char) *digits))
		return 0;
	errno = 0;
	pid = strtol(digits, &end, 10);
	if (*end != '\0' || errno != 0 || pid <= 0 || pid > PG_INT32_MAX)
		return 0;
	return (int) pid;
}

/*
 * Remove the temporary files that writers which died left for this target.
 *
 * A backend killed mid-export (or terminated: FATAL does not pass through
 * the PG_CATCH of llm_write_file_atomically) leaves "<path>.tmp<pid>"
 * behind.  The next export to the same path removes such files whose pid is
 * no running process (kill(pid, 0) says ESRCH).  A live pid -- or one we may
 * not signal -- may still be writing: its file stays.  (A writer on another
 * machine sharing the directory would look dead from here: keep exports of
 * different servers in different directories.)
 */
static void
remove_stale_temporaries(const char *who, const char *path)
{
	const char *base = last_dir_separator(path) + 1;	/* the path is absolute */
	char	   *dir = base - path > 1 ? pnstrdup(path, base - path - 1) : pstrdup("/");
	DIR		   *d;
	struct dirent *de;

	if (*base == '\0')
		return;					/* a directory's path: no file of ours */
	d = AllocateDir(dir);
	if (d == NULL)
		return;					/* a missing directory: nothing to clean */
	while ((de = ReadDirExtended(d, dir, LOG)) != NULL)
	{
		int			pid = temporary_file_pid(de->d_name, base);
		char	   *stale;

		if (pid == 0 || pid == MyProcPid || kill(pid, 0) == 0 || errno != ESRCH)
			continue;
		stale = psprintf("%s/%s", strcmp(dir, "/") == 0 ? "" : dir, de->d_name);
		if (unlink(stale) == 0)
			ereport(NOTICE,
					(errmsg("%s: removed \"%s\", left by process %d which no longer runs",
							who, stale, pid)));
		pfree(stale);
	}
	FreeDir(d);
}

static void
out_open(LlmOutFile *out, const char *who, const char *path)
{
	mode_t		oumask;

	out->who = who;
	out->path = pstrdup(path);
	out->tmp_path = psprintf("%s.tmp%d", path, MyProcPid);
	remove_stale_temporaries(who, path);

	/*
	 * Like COPY TO a file: files readable by all, writable by us only (the
	 * server's umask would make them private to the server's OS user).
	 */
	oumask = umask(S_IWGRP | S_IWOTH);
	PG_TRY();
	{
		ensure_directory(who, path);

		/*
		 * Our pid's temporary name may hold anything: a file of a process
		 * that had our pid before, or a symlink planted by someone who can
		 * write to the directory.  Remove it (unlink removes a link, not its
		 * target), then create the file exclusively ("x": O_EXCL, which
		 * follows no symlink), so we never write through a planted link.
		 */
		if (unlink(out->tmp_path) != 0 && errno != ENOENT)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("%s: could not remove file \"%s\": %m", who, out->tmp_path)));
		out->fp = AllocateFile(out->tmp_path, PG_BINARY_W "x");
	}
	PG_FINALLY();
	{
		umask(oumask);
	}
	PG_END_TRY();
	if (out->fp == NULL)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("%s: could not create file \"%s\": %m", who, out->tmp_path)));
}

void
llm_out_write(LlmOutFile *out, const void *buf, size_t len)
{
	if (fwrite(buf, 1, len, out->fp) != len)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("%s: could not write to file \"%s\": %m", out->who, out->tmp_path)));
	out->written += len;
}

static void
out_commit(LlmOutFile *out)
{
	FILE	   *fp = out->fp;

	out->fp = NULL;				/* closed below, whatever happens */
	if (FreeFile(fp) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("%s: could not write to file \"%s\": %m", out->who, out->tmp_path)));
	/* fsync the file, rename it into place, fsync the directory. */
	durable_rename(out->tmp_path, out->path, ERROR);
}

/* Close and remove the temporary file (on error). */
static void
out_abort(LlmOutFile *out)
{
	if (out->fp != NULL)
		FreeFile(out->fp);
	out->fp = NULL;
	unlink(out->tmp_path);
}

int64
llm_write_file_atomically(const char *who, const char *path, llm_out_writer write, void *arg)
{
	/* In palloc'd memory: PG_CATCH must see what the writer changed. */
	LlmOutFile *out = palloc0(sizeof(LlmOutFile));

	out_open(out, who, path);
	PG_TRY();
	{
		write(out, arg);
		out_commit(out);
	}
	PG_CATCH();
	{
		out_abort(out);
		PG_RE_THROW();
	}
	PG_END_TRY();
	return out->written;
}

/* ---- text files (config.json) --------------------------------------------- */

/*
 * All of a file, read to its end: st_size is only a first guess (files in
 * /proc say 0 and have content).  NUL-terminated; *len without the NUL.
 */
static char *
read_to_end(LlmInFile *f, int *len)
{
	const int64 limit = MaxAllocSize - VARHDRSZ - 1;	/* what a text value holds */
	int64		cap = Min(Max(f->size, 8192), limit);
	int64		done = 0;
	char	   *buf;

	if (f->size > limit)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%s: file \"%s\" is too large for a text value (" INT64_FORMAT " bytes)",
						f->who, f->path, f->size)));
	buf = palloc(cap + 1);
	for (;;)
	{
		ssize_t		got;

		CHECK_FOR_INTERRUPTS();
		if (done == cap)
		{
			if (cap == limit)
				ereport(ERROR,
						(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
						 errmsg("%s: file \"%s\" is too large for a text value (more than " INT64_FORMAT
								" bytes)", f->who, f->path, limit)));
			cap = Min(cap * 2, limit);
			buf = repalloc(buf, cap + 1);
		}
		got = pread(f->fd, buf + done, cap - done, (off_t) done);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("%s: could not read file \"%s\": %m", f->who, f->path)));
		if (got == 0)
			break;
		done += got;
	}
	buf[done] = '\0';
	*len = (int) done;
	return buf;
}

/* llm_read_text_file(path text) RETURNS text: a UTF-8 file's contents. */
PG_FUNCTION_INFO_V1(llm_read_text_file);
Datum
llm_read_text_file(PG_FUNCTION_ARGS)
{
	const char *who = "llm_read_text_file";
	char	   *path = llm_absolute_path(who, PG_GETARG_TEXT_PP(0));
	LlmInFile	f;
	char	   *buf;
	int			len;
	int			valid;

	llm_require_read_privilege(who);
	llm_in_open(&f, who, path);
	buf = read_to_end(&f, &len);
	llm_in_close(&f);
	/* UTF-8 (no NUL bytes either), or an error that names the file and the byte. */
	valid = pg_encoding_verifymbstr(PG_UTF8, buf, len);
	if (valid < len)
		ereport(ERROR,
				(errcode(ERRCODE_CHARACTER_NOT_IN_REPERTOIRE),
				 errmsg("%s: file \"%s\" is not valid UTF-8", who, path),
				 errdetail("Invalid byte sequence at byte %d (counting from 0): 0x%02x%s.",
						   valid, (unsigned char) buf[valid],
						   buf[valid] == '\0' ? ", a NUL byte" : "")));
	PG_RETURN_TEXT_P(cstring_to_text(pg_any_to_server(buf, len, PG_UTF8)));
}

static void
write_string(LlmOutFile *out, void *arg)
{
	llm_out_write(out, arg, strlen(arg));
}

/* llm_write_text_file(path text, content text) RETURNS bigint: bytes written. */
PG_FUNCTION_INFO_V1(llm_write_text_file);
Datum
llm_write_text_file(PG_FUNCTION_ARGS)
{
	const char *who = "llm_write_text_file";
	char	   *path = llm_absolute_path(who, PG_GETARG_TEXT_PP(0));
	char	   *content = text_to_cstring(PG_GETARG_TEXT_PP(1));

	llm_require_write_privilege(who);
	PG_RETURN_INT64(llm_write_file_atomically(who, path, write_string,
											  pg_server_to_any(content, strlen(content), PG_UTF8)));
}

/*
 * formats.h -- reading and writing checkpoint files on the server.
 *
 * These files share this header:
 *
 *   formats.c       what every format needs: privilege and path checks,
 *                   reading exact byte ranges, converting float16/bfloat16/
 *                   float64 to float32, writing a file atomically, and the
 *                   rows the readers return;
 *   safetensors.c   llm_read_safetensors(), llm_write_safetensors();
 *   npz.c           llm_read_npz(): .npy files in a zip archive, which
 *                   zip.c reads.
 *
 * Files on the server need the privileges COPY ... FROM/TO a file needs:
 * superuser, or the privileges of pg_read_server_files (to read) or
 * pg_write_server_files (to write).  Bad files are ERRORs, never crashes:
 *
 *   58P01 undefined_file                the file does not exist
 *   22P03 invalid_binary_representation the file breaks its format's rules
 *   XX001 data_corrupted                the file is truncated or fails a
 *                                       checksum: it was damaged
 *   0A000 feature_not_supported         valid, but not something we read
 *                                       (an integer dtype, Fortran order)
 */
#ifndef PG_LLM_FORMATS_H
#define PG_LLM_FORMATS_H

#include "postgres.h"

#include <stdio.h>

#include "fmgr.h"

#include "tensor/tensor.h"

/* ---- privileges and paths ----------------------------------------------- */

/* ERROR 42501 unless the current user may read (write) files on the server. */
extern void llm_require_read_privilege(const char *who);
extern void llm_require_write_privilege(const char *who);

/* The path argument as a C string; ERROR unless it is absolute. */
extern char *llm_absolute_path(const char *who, text *path);

/* ---- reading ------------------------------------------------------------- */

/*
 * A regular file opened for reading, with its size (known before we trust
 * offsets).  llm_in_open() refuses directories, FIFOs and devices (42809)
 * before opening them.
 */
typedef struct LlmInFile
{
	int			fd;				/* from OpenTransientFile: closed at abort too */
	const char *path;			/* for messages */
	const char *who;			/* the SQL function, for messages */
	int64		size;			/* bytes */
} LlmInFile;

extern void llm_in_open(LlmInFile *f, const char *who, const char *path);
extern void llm_in_close(LlmInFile *f);

/*
 * Read exactly `len` bytes at `offset`.  If the file ends first, ERROR
 * XX001 naming `what` ("the header", "tensor \"wte.weight\"").
 */
extern void llm_in_read(LlmInFile *f, int64 offset, void *buf, size_t len,
						const char *what);

/* Little-endian integers at p (file formats are little-endian). */
extern uint16 llm_le16(const unsigned char *p);
extern uint32 llm_le32(const unsigned char *p);
extern uint64 llm_le64(const unsigned char *p);

/* ---- element types --------------------------------------------------------- */

/* The element types we convert to float32. */
typedef enum LlmFileDtype
{
	LLM_FILE_F32,				/* IEEE float32 */
	LLM_FILE_F16,				/* IEEE float16 (half) */
	LLM_FILE_BF16,				/* bfloat16: the top half of a float32 */
	LLM_FILE_F64				/* IEEE float64 (double) */
} LlmFileDtype;

extern int	llm_dtype_size(LlmFileDtype dtype);

/*
 * A stream of bytes: a range of a file, or an inflated zip member.
 * read() delivers exactly `len` bytes or raises an ERROR.
 */
typedef struct LlmByteSource LlmByteSource;
struct LlmByteSource
{
	void		(*read) (LlmByteSource *src, void *buf, size_t len);
};

/*
 * Read `n` values of `dtype` (byte order: big_endian or little) from `src`
 * into dst as float32, in chunks, so converting needs little extra memory.
 */
extern void llm_read_values(LlmByteSource *src, LlmFileDtype dtype,
							bool big_endian, float *dst, int64 n);

/* ---- results of the readers ---------------------------------------------- */

/*
 * Set up a set-returning function that returns its rows in a tuplestore
 * (which spills to disk beyond work_mem), then add rows
 * (name text, dtype text, shape int[], data tensor) one tensor at a time.
 * llm_rows_add() frees t once the tuplestore has its copy.
 */
extern void llm_rows_begin(FunctionCallInfo fcinfo);
extern void llm_rows_add(FunctionCallInfo fcinfo, const char *name,
						 const char *dtype, Tensor *t);

/* ---- writing ------------------------------------------------------------- */

/*
 * A file being written: bytes go to "<path>.tmp<pid>", which replaces
 * <path> only once everything is written (rename is atomic), so readers
 * never see a half-written checkpoint; on error the temporary file is
 * removed.  A backend killed mid-write leaves its temporary file: the next
 * write to the same path removes "<path>.tmp<pid>" files whose pid is no
 * running process.
 */
typedef struct LlmOutFile
{
	FILE	   *fp;
	char	   *path;
	char	   *tmp_path;
	const char *who;
	int64		written;		/* bytes so far */
} LlmOutFile;

/* Writes the file's contents with llm_out_write(); raises ERRORs freely. */
typedef void (*llm_out_writer) (LlmOutFile *out, void *arg);

/*
 * Create `path` atomically with what write(out, arg) writes; returns the
 * number of bytes written.
 */
extern int64 llm_write_file_atomically(const char *who, const char *path,
									   llm_out_writer write, void *arg);
extern void llm_out_write(LlmOutFile *out, const void *buf, size_t len);

#endif							/* PG_LLM_FORMATS_H */

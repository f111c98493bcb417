/*
 * npz.c -- read NumPy's .npz files: a zip archive of .npy files.
 *
 * np.savez(path, **arrays) writes one member "<name>.npy" per array, stored
 * as is; np.savez_compressed deflates each member.  zip.c reads the archive;
 * here we read each member as a .npy file (numpy/lib/format.py):
 *
 *   "\x93NUMPY" major minor   magic and format version (1.0, 2.0 or 3.0)
 *   header length             2 bytes in version 1, 4 bytes in 2 and 3
 *   header                    a Python dict literal, padded with spaces:
 *                               {'descr': '<f4', 'fortran_order': False, 'shape': (768, 2304), }
 *   data                      prod(shape) values, row-major
 *
 * descr is the dtype: byte order ('<' little, '>' big) then kind and size
 * ('f4' float32).  We read f2, f4 and f8, converting to float32.
 */
#include "postgres.h"

#include "miscadmin.h"

#include "io/zip.h"

/* numpy refuses headers over 10000 bytes by default; we allow more. */
#define NPY_MAX_HEADER		(1024 * 1024)

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
	const ZipArchive *z;
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
	zip_format_error(d->z, psprintf("member \"%s\": %s in the .npy header %.*s",
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
			zip_unsupported_error(d->z, psprintf("member \"%s\" has more than %d dimensions",
											     d->member, LLM_MAX_NDIM), NULL);
		h->dims[h->ndim++] = dim;
		if (dim > 0 && h->numel > LLM_MAX_ELEMS / dim)
			zip_unsupported_error(d->z, psprintf("member \"%s\" is too large for a tensor", d->member), NULL);
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
	if (strlen(descr) == 3 && (descr[0] == '<' || descr[0] == '>') && descr[1] == 'f')
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
	zip_unsupported_error(d->z, psprintf("member \"%s\" has dtype '%s'", d->member, descr),
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
				zip_unsupported_error(d->z, psprintf("member \"%s\" has a structured dtype", d->member), NULL);
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
read_npy_header(ZipStream *s, NpyHeader *h)
{
	unsigned char magic[8];
	unsigned char len_bytes[4];
	uint32		header_len;
	char	   *text;
	DictParser	d;

	if (s->left < 10)
		zip_format_error(s->z, psprintf("member \"%s\" is too short for a .npy file", s->m->name));
	s->base.read(&s->base, magic, 8);
	if (memcmp(magic, "\x93NUMPY", 6) != 0)
		zip_format_error(s->z, psprintf("member \"%s\" is not a .npy file (bad magic)", s->m->name));
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
		zip_unsupported_error(s->z, psprintf("member \"%s\" has .npy format version %d.%d",
										     s->m->name, magic[6], magic[7]), NULL);
	if (header_len > NPY_MAX_HEADER || header_len > s->left)
		zip_corrupt_error(s->z, psprintf("member \"%s\" has a .npy header length of %u bytes",
									     s->m->name, header_len));

	text = palloc(header_len + 1);
	s->base.read(&s->base, text, header_len);
	text[header_len] = '\0';
	if (strlen(text) != header_len)
		zip_format_error(s->z, psprintf("member \"%s\" has a NUL byte in its .npy header", s->m->name));

	memset(h, 0, sizeof(*h));
	d.z = s->z;
	d.member = s->m->name;
	d.text = text;
	d.p = text;
	parse_npy_dict(&d, h);
}

/* ---- llm_read_npz ------------------------------------------------------------------- */

/* "wte.weight.npy" -> "wte.weight" */
static char *
array_name(const ZipArchive *z, const ZipMember *m)
{
	size_t		len = strlen(m->name);

	if (len <= 4 || strcmp(m->name + len - 4, ".npy") != 0)
		zip_format_error(z, psprintf("member \"%s\" is not a .npy file", m->name));
	return pnstrdup(m->name, len - 4);
}

static void
read_member(FunctionCallInfo fcinfo, ZipArchive *z, ZipMember *m)
{
	char	   *name = array_name(z, m);
	ZipStream s;
	NpyHeader	h;
	int64		nbytes;
	Tensor	   *t;

	zip_open_member(z, m, &s);
	read_npy_header(&s, &h);
	if (h.fortran_order)
		zip_unsupported_error(z, psprintf("array \"%s\" is stored in Fortran (column-major) order", name),
						      "Save np.ascontiguousarray(a) instead.");
	if (h.numel == 0)
		zip_unsupported_error(z, psprintf("array \"%s\" has shape %s; empty tensors are not supported",
									      name, shape_str(h.ndim, h.dims)), NULL);
	nbytes = h.numel * llm_dtype_size(h.dtype);
	if (nbytes > s.left)
		zip_corrupt_error(z, psprintf("array \"%s\" of shape %s needs " INT64_FORMAT " bytes, but member \"%s\" "
								      "has only " INT64_FORMAT " left (truncated)",
								      name, shape_str(h.ndim, h.dims), nbytes, m->name, s.left));

	t = tensor_new(h.ndim, h.dims);
	llm_read_values(&s.base, h.dtype, h.big_endian, t->data, h.numel);
	zip_close_member(&s);
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
	ZipArchive	z = {.who = "llm_read_npz"};
	ZipMember  *members;
	int64		count;

	llm_require_read_privilege(z.who);
	z.path = llm_absolute_path(z.who, PG_GETARG_TEXT_PP(0));
	llm_rows_begin(fcinfo);
	llm_in_open(&z.file, z.who, z.path);
	members = zip_read_directory(&z, &count);
	for (int64 i = 0; i < count; i++)
	{
		CHECK_FOR_INTERRUPTS();
		read_member(fcinfo, &z, &members[i]);
	}
	llm_in_close(&z.file);
	return (Datum) 0;
}

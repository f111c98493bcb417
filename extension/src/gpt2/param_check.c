/*
 * param_check.c -- the row trigger of llm_param: every row, whoever writes
 * it, must belong to a registered model, carry one of its parameter names
 * (gpt2_param_layout), and hold data, grad, m and v of that parameter's
 * shape.
 *
 * It also fills in the row's shape column when it is NULL (an INSERT that
 * leaves it out), and refuses any other value than the parameter's shape.
 *
 * It is C rather than PL/pgSQL because a training step's write-back sends
 * the whole model through it: PL/pgSQL copies each row it is handed and
 * returns (three tensors of up to 150 MB), this function reads only the
 * 40-byte headers and returns the row it was given -- unless it must fill
 * in shape, which a write-back never needs.  A column an UPDATE leaves as it
 * was (the same TOAST value) was checked when it was written and is not
 * read at all.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/rel.h"

#include "gpt2/model_cache.h"
#include "tensor/tensor.h"

/* "{768,2304}": the shape as int[] prints it (what the messages always said). */
static char *
int_array_text(int ndim, const int64 *dims)
{
	StringInfoData s;

	initStringInfo(&s);
	appendStringInfoChar(&s, '{');
	for (int i = 0; i < ndim; i++)
		appendStringInfo(&s, "%s" INT64_FORMAT, i ? "," : "", dims[i]);
	appendStringInfoChar(&s, '}');
	return s.data;
}

/* Does the tensor `value` have the parameter's shape?  Reads the header only. */
static bool
has_shape(Datum value, const Gpt2ParamInfo *p, int *ndim, int64 *dims)
{
	Tensor	   *head = DatumGetTensorHeaderP(value);
	bool		same = head->ndim == p->ndim;

	*ndim = Min(Max(head->ndim, 1), LLM_MAX_NDIM);
	for (int i = 0; i < *ndim; i++)
	{
		dims[i] = head->dims[i];
		same = same && i < p->ndim && dims[i] == p->dims[i];
	}
	return same;
}

/* The same stored value: an UPDATE that did not set the column keeps its TOAST pointer. */
static bool
same_toast_value(Datum a, Datum b)
{
	struct varlena *x = (struct varlena *) DatumGetPointer(a);
	struct varlena *y = (struct varlena *) DatumGetPointer(b);

	return VARATT_IS_EXTERNAL_ONDISK(x) && VARATT_IS_EXTERNAL_ONDISK(y) &&
		VARSIZE_EXTERNAL(x) == VARSIZE_EXTERNAL(y) &&
		memcmp(x, y, VARSIZE_EXTERNAL(x)) == 0;
}

/*
 * The row with its shape column set to the parameter's shape: the row itself
 * when it already holds that (no copy), a modified copy when it holds NULL.
 */
static HeapTuple
with_shape(HeapTuple row, TupleDesc desc, const char *model, const char *name,
		   const Gpt2ParamInfo *p)
{
	int			attnum = SPI_fnumber(desc, "shape");
	bool		isnull;
	Datum		value = heap_getattr(row, attnum, desc, &isnull);
	Datum		dims[2] = {Int32GetDatum((int32) p->dims[0]), Int32GetDatum((int32) p->dims[1])};
	Datum		shape;
	bool		null = false;

	if (!isnull)
	{
		ArrayType  *given = DatumGetArrayTypeP(value);
		int32	   *d = (int32 *) ARR_DATA_PTR(given);
		bool		same = ARR_NDIM(given) == 1 && !ARR_HASNULL(given) &&
			ARR_DIMS(given)[0] == p->ndim;

		for (int i = 0; same && i < p->ndim; i++)
			same = d[i] == p->dims[i];
		if (!same)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("llm_param: shape of \"%s\" of model \"%s\" must be %s, the shape of its data",
							name, model, int_array_text(p->ndim, p->dims)),
					 errhint("Leave shape out (or NULL): it is filled in.")));
		return row;
	}
	shape = PointerGetDatum(construct_array(dims, p->ndim, INT4OID, sizeof(int32), true,
											TYPALIGN_INT));
	return heap_modify_tuple_by_cols(row, desc, 1, &attnum, &shape, &null);
}

PG_FUNCTION_INFO_V1(llm_param_check);
Datum
llm_param_check(PG_FUNCTION_ARGS)
{
	static const char *const columns[4] = {"data", "grad", "m", "v"};
	TriggerData *td = (TriggerData *) fcinfo->context;
	TupleDesc	desc;
	HeapTuple	row,
				old = NULL;
	bool		isnull;
	char	   *model,
			   *name;
	Oid			relid;
	int64		version;
	Gpt2Config	cfg;
	bool		found;
	Gpt2ParamInfo *params,
			   *p = NULL;
	int			n_params;
	int64		n_floats;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(td->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(td->tg_event) || TRIGGER_FIRED_BY_DELETE(td->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("llm_param_check: must be a BEFORE INSERT OR UPDATE row trigger")));
	desc = RelationGetDescr(td->tg_relation);
	row = td->tg_trigtuple;
	if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
	{
		old = td->tg_trigtuple;
		row = td->tg_newtuple;
	}

	model = TextDatumGetCString(heap_getattr(row, SPI_fnumber(desc, "model"), desc, &isnull));
	name = TextDatumGetCString(heap_getattr(row, SPI_fnumber(desc, "name"), desc, &isnull));

	SPI_connect();
	found = gpt2_config_read(model, &relid, &version, &cfg);
	SPI_finish();
	if (!found)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("llm_param: unknown model \"%s\"", model),
				 errhint("Models are registered in llm_model_config.")));
	params = gpt2_param_layout(model, &cfg, &n_params, &n_floats);
	for (int i = 0; i < n_params && p == NULL; i++)
		if (strcmp(params[i].name, name) == 0)
			p = &params[i];
	if (p == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_param: model \"%s\" has no parameter named \"%s\"", model, name),
				 errhint("SELECT * FROM llm_param_shapes(model) lists the names.")));

	for (int c = 0; c < 4; c++)
	{
		int			attnum = SPI_fnumber(desc, columns[c]);
		Datum		value = heap_getattr(row, attnum, desc, &isnull);
		int			ndim;
		int64		dims[LLM_MAX_NDIM];

		if (isnull)
			continue;			/* data's NOT NULL is the constraint's to report */
		if (old != NULL)
		{
			bool		old_isnull;
			Datum		old_value = heap_getattr(old, attnum, desc, &old_isnull);

			if (!old_isnull && same_toast_value(value, old_value))
				continue;
		}
		if (has_shape(value, p, &ndim, dims))
			continue;
		if (c == 0)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("llm_param: \"%s\" of model \"%s\" has shape %s, expected %s",
							name, model, int_array_text(ndim, dims), int_array_text(p->ndim, p->dims))));
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("llm_param: grad, m and v of \"%s\" must have shape %s",
						name, int_array_text(p->ndim, p->dims))));
	}
	return PointerGetDatum(with_shape(row, desc, model, name, p));
}

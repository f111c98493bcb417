"""What an installed pg_llm consists of, object by object, for comparing two databases.

snapshot(conn) returns {object: definition}: every member of the extension
(functions with their full definition -- arguments, defaults, result,
language, volatility, strictness, parallel safety, SET search_path, body --,
tables with their columns, defaults, identity, constraints, indexes,
triggers, row-level security policies, views, sequences, types, casts, operators) and its comment, keyed
by a readable name such as "function llm_init(text,bigint)" or
"table llm_param column grad".  Two installs are the same when their
snapshots are equal; diff() says which objects are not.
"""

from __future__ import annotations

import difflib
import re

MEMBERS = """
    SELECT d.classid::regclass::text, d.objid, pg_describe_object(d.classid, d.objid, 0)
    FROM pg_depend d JOIN pg_extension e ON d.refobjid = e.oid
    WHERE d.refclassid = 'pg_extension'::regclass AND e.extname = 'pg_llm' AND d.deptype = 'e'
"""

FUNCTION = """
    SELECT p.oid::regprocedure::text,
           CASE WHEN p.prokind = 'a' THEN 'aggregate ' || p.proname || '('
                    || pg_get_function_arguments(p.oid) || ') -> ' || pg_get_function_result(p.oid)
                ELSE pg_get_functiondef(p.oid) END,
           obj_description(p.oid, 'pg_proc'), p.proacl::text, p.procost, p.prorows, p.proleakproof
    FROM pg_proc p WHERE p.oid = %s
"""

RELATION = """
    SELECT c.relname, c.relkind, c.relpersistence, c.reloptions::text, c.relrowsecurity,
           obj_description(c.oid, 'pg_class'), c.relacl::text,
           CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END
    FROM pg_class c WHERE c.oid = %s
"""

COLUMNS = """
    SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
           pg_get_expr(ad.adbin, ad.adrelid), a.attidentity, a.attgenerated,
           col_description(a.attrelid, a.attnum), a.attstorage, a.attcompression,
           (SELECT coll.collname FROM pg_collation coll
            WHERE coll.oid = a.attcollation AND a.attcollation <> 0),
           obj_description(pg_get_serial_sequence(a.attrelid::regclass::text, a.attname)::regclass,
                           'pg_class')
    FROM pg_attribute a LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
    WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
"""

CONSTRAINTS = """
    SELECT conname, pg_get_constraintdef(oid), obj_description(oid, 'pg_constraint')
    FROM pg_constraint WHERE conrelid = %s
"""

INDEXES = """
    SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid),
           obj_description(i.indexrelid, 'pg_class')
    FROM pg_index i WHERE i.indrelid = %s
"""

TRIGGERS = """
    SELECT tgname, pg_get_triggerdef(oid), obj_description(oid, 'pg_trigger')
    FROM pg_trigger WHERE tgrelid = %s AND NOT tgisinternal
"""

POLICIES = """
    SELECT polname, polcmd, polpermissive, polroles::regrole[]::text, pg_get_expr(polqual, polrelid),
           pg_get_expr(polwithcheck, polrelid), obj_description(oid, 'pg_policy')
    FROM pg_policy WHERE polrelid = %s
"""

SEQUENCE = """
    SELECT format_type(seqtypid, NULL), seqstart, seqincrement, seqmax, seqmin, seqcache, seqcycle
    FROM pg_sequence WHERE seqrelid = %s
"""

TYPE = """
    SELECT t.oid::regtype::text, t.typtype, t.typlen, t.typbyval, t.typalign, t.typstorage,
           t.typcategory, t.typdelim, t.typelem::regtype::text, t.typinput::regprocedure::text,
           t.typoutput::regprocedure::text, t.typreceive::text, t.typsend::text,
           t.typmodin::text, t.typmodout::text, t.typanalyze::text, t.typsubscript::text,
           obj_description(t.oid, 'pg_type'),
           (SELECT array_agg(enumlabel ORDER BY enumsortorder) FROM pg_enum WHERE enumtypid = t.oid),
           (SELECT array_agg(conname || ' ' || pg_get_constraintdef(oid) ORDER BY conname)
            FROM pg_constraint WHERE contypid = t.oid),
           (SELECT array_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod) ORDER BY a.attname)
            FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
            WHERE a.attrelid = t.typrelid AND c.relkind = 'c' AND a.attnum > 0 AND NOT a.attisdropped)
    FROM pg_type t WHERE t.oid = %s
"""

CAST = """
    SELECT format_type(castsource, NULL), format_type(casttarget, NULL),
           castfunc::regprocedure::text, castcontext, castmethod, obj_description(oid, 'pg_cast')
    FROM pg_cast WHERE oid = %s
"""

OPERATOR = """
    SELECT oprname, format_type(oprleft, NULL), format_type(oprright, NULL),
           format_type(oprresult, NULL), oprcode::regprocedure::text, oprcom::regoperator::text,
           oprnegate::regoperator::text, oprrest::text, oprjoin::text, oprcanmerge, oprcanhash,
           obj_description(oid, 'pg_operator')
    FROM pg_operator WHERE oid = %s
"""

CONFIG_TABLES = """
    SELECT c.relname, cond
    FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS x(rel, cond), pg_class c
    WHERE e.extname = 'pg_llm' AND c.oid = x.rel
"""


def _rows(conn, query, oid):
    return sorted(tuple(conn.execute(query, [oid]).fetchall()), key=repr)


def snapshot(conn) -> dict[str, object]:
    """{readable object name: its definition} for everything pg_llm installed in this database."""
    out: dict[str, object] = {}
    for catalog, oid, described in conn.execute(MEMBERS).fetchall():
        if catalog == "pg_proc":
            name, *definition = conn.execute(FUNCTION, [oid]).fetchone()
            out[f"function {name}"] = tuple(definition)
        elif catalog == "pg_class":
            _relation(conn, oid, out)
        elif catalog == "pg_type":
            out[described] = conn.execute(TYPE, [oid]).fetchone()
        elif catalog == "pg_cast":
            out[described] = conn.execute(CAST, [oid]).fetchone()
        elif catalog == "pg_operator":
            out[described] = conn.execute(OPERATOR, [oid]).fetchone()
        else:  # operator classes and families, schemas, ...: their presence
            out[described] = catalog
    out["extension configuration tables"] = sorted(conn.execute(CONFIG_TABLES).fetchall())
    return out


def _relation(conn, oid, out):
    name, kind, *definition = conn.execute(RELATION, [oid]).fetchone()
    label = {"r": "table", "v": "view", "m": "materialized view", "S": "sequence"}.get(kind, f"relation({kind})")
    out[f"{label} {name}"] = tuple(definition)
    if kind == "S":
        out[f"{label} {name} parameters"] = conn.execute(SEQUENCE, [oid]).fetchone()
        return
    # Columns by name: an upgrade's ADD COLUMN can only append, so the order is not compared.
    for column, *column_def in conn.execute(COLUMNS, [oid]).fetchall():
        out[f"{label} {name} column {column}"] = tuple(column_def)
    for constraint, *constraint_def in conn.execute(CONSTRAINTS, [oid]).fetchall():
        out[f"{label} {name} constraint {constraint}"] = tuple(constraint_def)
    for index, *index_def in conn.execute(INDEXES, [oid]).fetchall():
        out[f"{label} {name} index {index}"] = tuple(index_def)
    for trigger, *trigger_def in conn.execute(TRIGGERS, [oid]).fetchall():
        out[f"{label} {name} trigger {trigger}"] = tuple(trigger_def)
    for policy, *policy_def in conn.execute(POLICIES, [oid]).fetchall():
        out[f"{label} {name} policy {policy}"] = tuple(policy_def)


def diff(expected: dict, actual: dict, expected_label: str = "fresh install",
         actual_label: str = "upgraded") -> list[str]:
    """The objects that differ, one readable paragraph each (empty when equal)."""
    lines = []
    for name in sorted(expected.keys() - actual.keys()):
        lines.append(f"missing after the upgrade: {name}\n    {expected_label}: {expected[name]!r}")
    for name in sorted(actual.keys() - expected.keys()):
        lines.append(f"only in the upgraded database (drop it in the upgrade): {name}\n"
                     f"    {actual_label}: {actual[name]!r}")
    for name in sorted(expected.keys() & actual.keys()):
        if expected[name] != actual[name]:
            lines.append(f"differs: {name}\n" + _field_diff(expected[name], actual[name], expected_label,
                                                            actual_label))
    return lines


def _field_diff(expected, actual, expected_label, actual_label) -> str:
    """The fields of two definitions that differ; long texts (a function's body) as a unified diff."""
    if not (isinstance(expected, tuple) and isinstance(actual, tuple) and len(expected) == len(actual)):
        return f"    {expected_label}: {expected!r}\n    {actual_label}: {actual!r}"
    out = []
    for field, (want, got) in enumerate(zip(expected, actual)):
        if want == got:
            continue
        if isinstance(want, str) and isinstance(got, str) and "\n" in want + got:
            body = difflib.unified_diff(got.splitlines(), want.splitlines(), actual_label, expected_label,
                                        lineterm="")
            out.append(f"    field {field}:\n" + "\n".join("      " + line for line in body))
        else:
            out.append(f"    field {field}: {expected_label} {want!r}, {actual_label} {got!r}")
    return "\n".join(out)


def suggested_upgrade_sql(expected: dict, actual: dict) -> str:
    """SQL that would bring `actual` to `expected`, where it can be derived from the
    definitions (functions and procedures, comments, plain added columns); the rest as
    TODO lines.  A starting point for the upgrade script: read it before pasting it."""
    out = []
    for name in sorted(actual.keys() - expected.keys()):
        if name.startswith("function "):
            kind = "PROCEDURE" if "CREATE OR REPLACE PROCEDURE" in actual[name][0] else "FUNCTION"
            out.append(f"DROP {kind} {name.removeprefix('function ')};")
        else:
            out.append(f"-- TODO drop: {name}")
    for name in sorted(expected.keys()):
        if name in actual and expected[name] == actual[name]:
            continue
        if name.startswith("function "):
            out.append(_function_sql(name.removeprefix("function "), expected[name]))
        elif " column " in name and name.startswith("table ") and name not in actual:
            out.append(_column_sql(name, expected[name]))
        elif " constraint " in name and name not in actual and str(expected[name][0]).startswith("NOT NULL "):
            continue  # (the ADD COLUMN ... NOT NULL above makes it)
        else:
            out.append(f"-- TODO {'add' if name not in actual else 'change'}: {name}: {expected[name]!r}")
    return "\n".join(out)


def _literal(text: str | None) -> str:
    return "NULL" if text is None else "'" + text.replace("'", "''") + "'"


def _function_sql(signature: str, definition: tuple) -> str:
    functiondef, comment = definition[0], definition[1]
    kind = "PROCEDURE" if functiondef.startswith("CREATE OR REPLACE PROCEDURE") else "FUNCTION"
    # pg_get_functiondef names the schema, where sql/ wrote @extschema@ (and the
    # upgrade script runs with the extension's schema first on the search_path)
    schema = re.match(r"CREATE OR REPLACE (?:FUNCTION|PROCEDURE) ([a-z_][a-z0-9_]*)\.", functiondef)[1]
    body = functiondef.replace(f" {schema}.", " ", 1)
    body = re.sub(r"^( SET search_path TO .*)$",
                  lambda m: m[1].replace(f"'{schema}'", "@extschema@"), body, count=1, flags=re.M)
    return (f"-- (if its result type changed: DROP {kind} {signature}; first)\n{body.rstrip()};\n"
            f"COMMENT ON {kind} {signature} IS {_literal(comment)};")


def _column_sql(name: str, definition: tuple) -> str:
    _, table, _, column = name.split(" ", 3)
    type_, not_null, default, identity, generated, comment = definition[:6]
    if identity or generated:
        return f"-- TODO add: {name}: {definition!r}"
    sql = f"ALTER TABLE {table} ADD COLUMN {column} {type_}"
    sql += f" DEFAULT {default}" if default is not None else ""
    sql += " NOT NULL" if not_null else ""
    return sql + f";\nCOMMENT ON COLUMN {table}.{column} IS {_literal(comment)};"

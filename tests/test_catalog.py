"""Every object pg_llm creates carries a COMMENT ON: learners read `\\df+`,
`\\dd`, `\\dT+` and `\\d+`, and psql shows them nothing without one.

The members of the extension are the objects pg_depend ties to it with
deptype 'e'; a function added without its COMMENT ON fails here by name.
"""

EXTENSION_MEMBERS = """
    SELECT d.objid
    FROM pg_depend d
    JOIN pg_extension e ON e.oid = d.refobjid
    WHERE d.refclassid = 'pg_extension'::regclass
      AND e.extname = 'pg_llm'
      AND d.deptype = 'e'
      AND d.classid = %s::regclass
"""


def _undocumented(conn, catalog, label_sql, where="true"):
    """(the members of `catalog`, those without a description), as labels."""
    rows = conn.execute(
        f"""
        SELECT {label_sql}, coalesce(obj_description(m.objid, %s), '') = ''
        FROM ({EXTENSION_MEMBERS}) AS m
        WHERE {where}
        ORDER BY 1
        """,
        [catalog, catalog],
    ).fetchall()
    return [label for label, _ in rows], [label for label, missing in rows if missing]


def test_every_function_has_a_comment(conn):
    members, undocumented = _undocumented(conn, "pg_proc", "m.objid::regprocedure::text")
    # The query must see the extension's functions at all, or it proves nothing.
    assert {"llm_matmul(tensor,tensor,boolean,boolean)", "tensor_in(cstring)",
            "llm_param_check()", "pg_llm_gelu(bytea)"} <= set(members)
    print("functions without COMMENT ON FUNCTION:", *undocumented, sep="\n  ")
    assert undocumented == []


def test_every_relation_has_a_comment(conn):
    members, undocumented = _undocumented(conn, "pg_class", "m.objid::regclass::text")
    assert {"llm_model_config", "llm_param"} <= set(members)
    print("tables and sequences without COMMENT ON:", *undocumented, sep="\n  ")
    assert undocumented == []


def test_every_column_has_a_comment(conn):
    rows = conn.execute(
        f"""
        SELECT a.attrelid::regclass::text || '.' || a.attname,
               coalesce(col_description(a.attrelid, a.attnum), '') = ''
        FROM ({EXTENSION_MEMBERS}) AS m
        JOIN pg_class c ON c.oid = m.objid
        JOIN pg_attribute a ON a.attrelid = c.oid
        WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
          AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY 1
        """,
        ["pg_class"],
    ).fetchall()
    assert {"llm_param.data", "llm_model_config.n_embd"} <= {column for column, _ in rows}
    undocumented = [column for column, missing in rows if missing]
    print("columns without COMMENT ON COLUMN:", *undocumented, sep="\n  ")
    assert undocumented == []


def test_every_type_has_a_comment(conn):
    # Left out: the types PostgreSQL makes by itself, a table's row type and
    # each type's array type (\dT lists neither).
    members, undocumented = _undocumented(
        conn, "pg_type", "m.objid::regtype::text",
        where="NOT EXISTS (SELECT 1 FROM pg_type t WHERE t.oid = m.objid AND t.typrelid <> 0)"
              " AND NOT EXISTS (SELECT 1 FROM pg_type t WHERE t.typarray = m.objid)")
    assert "tensor" in members
    assert "tensor[]" not in members
    print("types without COMMENT ON TYPE:", *undocumented, sep="\n  ")
    assert undocumented == []


def test_every_cast_has_a_comment(conn):
    members, undocumented = _undocumented(
        conn, "pg_cast",
        "(SELECT format('%%s AS %%s', castsource::regtype, casttarget::regtype)"
        " FROM pg_cast WHERE oid = m.objid)")
    assert {"real[] AS tensor", "tensor AS bytea"} <= set(members)
    print("casts without COMMENT ON CAST:", *undocumented, sep="\n  ")
    assert undocumented == []

"""The README keeps up with the extension: its "SQL API at a glance" names
every function a user calls (triggers, type I/O and internal helpers aside)."""
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"

# Not called by users: the type's I/O functions, and helpers other functions call.
NOT_USER_FACING = {"tensor_in", "tensor_out", "tensor_recv", "tensor_send",
                   "llm_require_arg", "llm_import_require_model", "llm_info_text"}


def glance_section() -> str:
    text = README.read_text()
    match = re.search(r"^## The SQL API at a glance\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, "README.md has no '## The SQL API at a glance' section"
    return match.group(1)


def test_the_api_at_a_glance_names_every_function(conn):
    rows = conn.execute("""
        SELECT DISTINCT p.proname, coalesce(d.description, '')
        FROM pg_depend dep
        JOIN pg_extension e ON e.oid = dep.refobjid AND e.extname = 'pg_llm'
        JOIN pg_proc p ON p.oid = dep.objid AND dep.classid = 'pg_proc'::regclass
        LEFT JOIN pg_description d ON d.objoid = p.oid AND d.classoid = 'pg_proc'::regclass
        WHERE dep.deptype = 'e'""").fetchall()
    user_facing = {name for name, comment in rows
                   if name not in NOT_USER_FACING and not comment.startswith(("trigger", "internal"))}
    assert len(user_facing) > 80
    section = glance_section()
    missing = sorted(n for n in user_facing if not re.search(rf"\b{n}\b", section))
    assert not missing, f"README's SQL API at a glance lacks: {missing}"

"""%load_ext pg_llm_lab.notebook: jupysql's magics without the noise (the
"toml package isn't installed" line, empty tables), in a real IPython shell."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("sql")  # jupysql

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

SHELL = textwrap.dedent("""
    import json, sys
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output
    import pg_llm_lab

    ip = InteractiveShell.instance()
    ip.user_ns["engine"] = pg_llm_lab.engine(sys.argv[2])
    shown = {}
    with capture_output() as loading:
        ip.run_line_magic("load_ext", sys.argv[1])
        ip.run_line_magic("sql", "engine")
    shown["load"] = [str(o.data.get("text/plain")) for o in loading.outputs] + [loading.stdout]
    for label, cell in [("ddl", "DROP TABLE IF EXISTS nbm_t; CREATE TABLE nbm_t (a int)"),
                        ("insert", "INSERT INTO nbm_t VALUES (1), (2)"),
                        ("select", "SELECT a FROM nbm_t ORDER BY a"),
                        ("none", "SELECT a FROM nbm_t WHERE false")]:
        result = ip.run_cell_magic("sql", "", cell)
        shown[label] = None if result is None else str(result)
    ip.run_cell_magic("sql", "", "DROP TABLE nbm_t")
    print(json.dumps(shown))
""")


def run_shell(extension, db_url):
    # cwd notebooks/: jupysql looks for pyproject.toml from there up, and finds the lab's
    done = subprocess.run([sys.executable, "-c", SHELL, extension, db_url], cwd=NOTEBOOKS,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # (at exit jupysql prints "Closing <url>": the JSON is the line before)
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("{")))


def test_quiet_loading_and_no_empty_tables(db_url):
    shown = run_shell("pg_llm_lab.notebook", db_url)
    assert shown["load"] == [""]                             # nothing displayed, nothing printed
    assert shown["ddl"] is None and shown["insert"] is None  # no empty tables, no "rows affected"
    assert "| 1 |" in shown["select"] and "| 2 |" in shown["select"]
    assert "| a |" in shown["none"]                          # no rows is still a result: its header


def test_plain_jupysql_is_what_it_quiets(db_url):
    """The control: %load_ext sql alone shows the empty tables (and, without
    the toml package, says so) -- what the test above checks is gone."""
    shown = run_shell("sql", db_url)
    assert shown["ddl"] is not None and "| a |" not in shown["ddl"]
    try:
        import toml  # noqa: F401
    except ImportError:
        assert any("toml" in line for line in shown["load"])


PARAMETERS = textwrap.dedent("""
    import json, sys
    from IPython.core.interactiveshell import InteractiveShell
    import pg_llm_lab

    conn = pg_llm_lab.connect(sys.argv[1])
    ip = InteractiveShell.instance()
    ip.user_ns["engine"] = pg_llm_lab.engine(conn=conn)
    ip.run_line_magic("load_ext", "pg_llm_lab.notebook")
    ip.run_line_magic("sql", "engine")
    ip.run_line_magic("config", 'SqlMagic.named_parameters = "enabled"')
    ip.user_ns["sentence"] = sys.argv[2]
    ip.user_ns["ids"] = [3, 1, 4]
    row = ip.run_cell_magic("sql", "", "SELECT :sentence AS s, cardinality(:ids) AS n, '[1,2]'::tensor AS t")
    print(json.dumps(list(list(row)[0])))
""")


def test_named_parameters_carry_any_text(db_url):
    """The notebooks pass a learner's text to %%sql as :name (SqlMagic.named_parameters):
    quotes and apostrophes arrive intact, lists as arrays, and '::' casts still work --
    where '{{name}}' pasted into the SQL would break on the first apostrophe."""
    sentence = "It's Juliet's \"quote\"; -- not a comment"
    done = subprocess.run([sys.executable, "-c", PARAMETERS, db_url, sentence], cwd=NOTEBOOKS,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    s, n, t = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("[")))
    assert s == sentence and n == 3 and t == "[1,2]"

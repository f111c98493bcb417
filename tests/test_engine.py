"""pg_llm_lab.engine(conn=conn): %%sql cells and Python on one session, in a real IPython shell.

A notebook's `%%sql` cells run through jupysql's SQLAlchemy connection and its
Python through a psycopg connection; over one session they agree on what is
per session: the autograd mode, the tape (llm_tape shows the session's own),
temporary tables.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sql")  # jupysql

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

SHELL = textwrap.dedent("""
    import json, sys
    import numpy as np
    from IPython.core.interactiveshell import InteractiveShell
    import pg_llm_lab

    conn = pg_llm_lab.connect(sys.argv[1])
    ip = InteractiveShell.instance()
    ip.user_ns["engine"] = pg_llm_lab.engine(conn=conn)
    ip.run_line_magic("load_ext", "pg_llm_lab.notebook")
    ip.run_line_magic("sql", "engine")
    seen = {}
    seen["pids"] = [ip.run_line_magic("sql", "SELECT pg_backend_pid() AS pid").dict()["pid"][0],
                    conn.execute("SELECT pg_backend_pid()").fetchone()[0]]
    ip.run_cell_magic("sql", "", "SELECT llm_autograd_mode('full'); SELECT llm_prune_autograd_state()")
    x = conn.execute("SELECT llm_gelu('[[1,2],[3,4]]'::tensor)").fetchone()[0]   # recorded: the mode is shared
    seen["python_value"] = type(x).__name__
    tape = ip.run_cell_magic("sql", "", "SELECT op, data FROM llm_tape t JOIN llm_tensor_rt r ON r.id = t.output")
    seen["sql_tape"] = [list(row) for row in tape]
    ip.run_cell_magic("sql", "", "CREATE TEMP TABLE mine AS SELECT 7 AS n")
    seen["temp"] = conn.execute("SELECT n FROM mine").fetchone()[0]
    print(json.dumps(seen))
""")


def test_sql_cells_and_python_share_one_session(db_url):
    done = subprocess.run([sys.executable, "-c", SHELL, db_url], cwd=NOTEBOOKS,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("{")))
    assert seen["pids"][0] == seen["pids"][1]
    assert seen["python_value"] == "ndarray"                   # Python gets arrays ...
    [(op, text)] = seen["sql_tape"]                            # ... %sql the text form
    x = np.array([[1, 2], [3, 4]], dtype=np.float64)
    gelu = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    assert op == "llm_gelu" and text.startswith("[[")
    np.testing.assert_allclose(json.loads(text), gelu, rtol=1e-6)
    assert seen["temp"] == 7

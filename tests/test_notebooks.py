"""The notebooks as committed: the numbered path, clean, time-limited, runnable where
the README's first command leaves a learner (no PyTorch), tests kept apart from
teaching, exercises at the end, nothing deleted that is not the learner's own -- and
the whole path run by two learners at once on one server.

nbmake executes every notebook (pytest's testpaths include notebooks/); these
tests check what nbmake does not.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
NOTEBOOKS = TESTS.parent / "notebooks"
PATH = ["00_setup", "01_text_and_tokens", "02_tensors_in_sql", "03_attention_from_ops", "04_gpt2_block",
        "05_backprop_by_hand", "06_the_gpt2_tape", "07_one_optimizer_step", "08_training_on_text",
        "09_generation", "10_inspection_and_time_travel", "11_checkpoints_and_hf", "12_instructor"]
# The notebooks of the path this checkout has (all of them once the path is complete).
PRESENT = [name for name in PATH if (NOTEBOOKS / f"{name}.ipynb").exists()]
# Each notebook's own limit (nbmake reads metadata.execution.timeout): seconds per cell.
MAX_TIMEOUT = 300
# What `pip install -e .` does not bring: the notebooks must run without them.
OPTIONAL = ["torch", "transformers", "tokenizers", "tiktoken"]


def load(name: str) -> dict:
    return json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())


def source(cell: dict) -> str:
    return "".join(cell["source"])


def is_check(cell: dict) -> bool:
    return "check" in cell.get("metadata", {}).get("tags", [])


def test_the_numbered_path_is_complete():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == PATH


@pytest.mark.parametrize("name", PRESENT)
def test_committed_notebooks_carry_no_outputs(name):
    for i, cell in enumerate(load(name)["cells"]):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], (f"{name} cell {i} has outputs: clear them before committing "
                                           "(jupyter nbconvert --clear-output --inplace notebooks/*.ipynb)")
            assert cell["execution_count"] is None, f"{name} cell {i} has an execution count"


@pytest.mark.parametrize("name", PRESENT)
def test_notebooks_run_under_a_time_limit(name):
    timeout = load(name)["metadata"].get("execution", {}).get("timeout")
    assert isinstance(timeout, int) and 0 < timeout <= MAX_TIMEOUT, f"{name}: metadata.execution.timeout {timeout!r}"


# ---- tests apart from teaching ---------------------------------------------------------

def python_lines(cell: dict) -> list[str]:
    """The lines of a code cell that Python runs (not a %%sql cell, not comments, not magics)."""
    text = source(cell)
    if text.lstrip().startswith("%%"):
        return []
    return [line for line in text.splitlines() if not line.lstrip().startswith(("#", "%", "!"))]


@pytest.mark.parametrize("name", PRESENT)
def test_asserts_live_only_in_check_cells(name):
    for i, cell in enumerate(load(name)["cells"]):
        if cell["cell_type"] != "code":
            continue
        if is_check(cell):
            assert "check(" in source(cell), f"{name} cell {i} is tagged check but calls no check(...)"
        else:
            asserts = [line for line in python_lines(cell) if re.match(r"\s*assert\b", line)]
            assert not asserts, (f"{name} cell {i} is a learner's cell with {asserts}: move the test to a cell "
                                 "tagged check and use check(condition, message)")


@pytest.mark.parametrize("name", PRESENT)
def test_every_notebook_has_checks_and_ends_with_exercises(name):
    cells = load(name)["cells"]
    assert any(is_check(cell) for cell in cells), f"{name} has no cell tagged check"
    exercises = [i for i, cell in enumerate(cells) if cell["cell_type"] == "markdown"
                 and re.search(r"^#+\s*Exercises", source(cell), re.M)]
    assert exercises, f"{name} has no '## Exercises' section"
    at = exercises[-1]
    ending = "\n".join(source(cell) for cell in cells[at:] if cell["cell_type"] == "markdown")
    assert all(cell["cell_type"] == "markdown" for cell in cells[at:]), f"{name}: code after the exercises"
    before_solutions = ending.split("<details>")[0]
    count = len(re.findall(r"^\d+\.\s", before_solutions, re.M))
    assert 2 <= count <= 4, f"{name}: {count} exercises (2 to 4 wanted)"
    assert re.search(r"<details>\s*<summary>\s*Solution", ending), f"{name}: solutions not collapsed in <details>"
    assert "predict, then run" in "\n".join(source(c) for c in cells).lower(), f"{name}: no 'predict, then run' prompt"


# ---- nothing deleted that is not the learner's own -------------------------------------

# A statement that deletes rows or objects, and the word that names what it deletes.
DESTRUCTIVE = re.compile(
    r"\b(?:DELETE\s+FROM|TRUNCATE(?:\s+TABLE)?|DROP\s+(?:TABLE|VIEW|FUNCTION|AGGREGATE|MATERIALIZED\s+VIEW|INDEX)"
    r"(?:\s+IF\s+EXISTS)?)\s+([\w.{}]+)(?P<rest>[^;\"]*)", re.I)


def own_names(cells: list[dict]) -> set[str]:
    """Variables the notebook assigns from mine(...) or from another pg_llm_lab.course helper
    (they return the learner's names): `model = mine(conn, "gpt")`."""
    helpers = {"mine"}
    for cell in cells:
        for line in python_lines(cell):
            found = re.match(r"\s*from pg_llm_lab\.course import (.+)", line)
            if found:
                helpers |= {word.strip(" ()") for word in found.group(1).split(",")} - {"check", "learner"}
    names = set()
    for cell in cells:
        for line in python_lines(cell):
            found = re.match(r"\s*([\w, ]+?)\s*=\s*(\w+)\(", line)
            if found and found.group(2) in helpers:
                names |= {word.strip() for word in found.group(1).split(",")}
    return names


def deletion_is_own(statement: re.Match, line: str, own: set[str]) -> bool:
    """Does the deleting statement name only the learner's things: a pg_temp object, an object
    named {{var}} / {var} for a var of own_names, or rows WHERE ... = {{var}} / %s bound to one?"""
    target, rest = statement.group(1), statement.group("rest")
    if target.lower().startswith("pg_temp."):
        return True
    if re.fullmatch(r"\{\{?(\w+)\}?\}", target):
        return re.fullmatch(r"\{\{?(\w+)\}?\}", target).group(1) in own
    condition = re.search(r"\bWHERE\s+\w+\s*=\s*(?:'\{\{(\w+)\}\}'|(%s))", rest, re.I)
    if not condition:
        return False
    if condition.group(1):
        return condition.group(1) in own
    bound = re.search(r",\s*\[\s*(\w+)", line[statement.end():])      # conn.execute("... = %s", [var])
    return bool(bound) and bound.group(1) in own


@pytest.mark.parametrize("name", PRESENT)
def test_no_cell_deletes_what_is_not_the_learners(name):
    """A static check: every DELETE, DROP or TRUNCATE a notebook runs names a temporary
    object or something named with mine() (commented-out cleanup cells are fine)."""
    cells = load(name)["cells"]
    own = own_names(cells)
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        for line in source(cell).splitlines():
            code = line.split("--")[0]
            if line.lstrip().startswith("#"):
                continue
            for statement in DESTRUCTIVE.finditer(code):
                assert deletion_is_own(statement, code, own), (
                    f"{name} cell {i}: {line.strip()!r} may delete what is not the learner's: name the "
                    f"target with a variable from mine() (known here: {sorted(own)}) or a pg_temp object")


def test_the_deletion_check_catches_global_deletes():
    """The check above, on lines like those the old notebooks had."""
    own = {"model", "corpus"}

    def allowed(line):
        return all(deletion_is_own(m, line, own) for m in DESTRUCTIVE.finditer(line))

    assert allowed("DROP TABLE IF EXISTS {{corpus}};") and allowed('conn.execute(f"DROP TABLE {corpus}")')
    assert allowed('conn.execute("DELETE FROM llm_model_config WHERE model = %s", [model])')
    assert allowed("DELETE FROM llm_param WHERE model = '{{model}}'") and allowed("DROP TABLE pg_temp.x")
    assert not allowed("DELETE FROM llm_dataset WHERE split = 'val'")
    assert not allowed("conn.execute(\"DELETE FROM llm_tokenizer WHERE model LIKE 'nb05-%'\")")
    assert not allowed("DROP TABLE nb05_corpus") and not allowed("TRUNCATE llm_train_log")
    assert not allowed('conn.execute("DELETE FROM llm_model_config WHERE model = %s", [name])')


# ---- without PyTorch -------------------------------------------------------------------

# A kernel in which the optional packages are not importable, as after
# `pip install -e .`: a sitecustomize on PYTHONPATH puts a finder first on
# sys.meta_path that refuses them (importlib.util.find_spec raises too).
# test_two_learners_run_the_whole_path_at_once runs one learner's whole path in such
# kernels (every notebook runs without them, not only those that compare).
HIDE_OPTIONAL = textwrap.dedent("""
    import sys

    HIDDEN = {hidden!r}

    class Hide:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HIDDEN:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, Hide())
""")

# The notebooks that compare with an optional package (the others import none).
COMPARING = [name for name in PRESENT if "optional(" in "".join(source(c) for c in load(name)["cells"])]


def without_optional(env: dict, shim: Path) -> dict:
    """env with the sitecustomize above first on PYTHONPATH (written into the folder shim):
    a Python, and a notebook kernel, in which the optional packages cannot be imported."""
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(HIDE_OPTIONAL.format(hidden=OPTIONAL))
    env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(shim), env.get("PYTHONPATH")]))}
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert "No module named 'torch'" in probe.stderr      # the shim works
    return env


def check_ran_without_pytorch(results: list[dict]) -> None:
    """Each notebook that compares with an optional package, run without them (test_two_learners...:
    bob's run), said what it skipped -- and skipped it, not faked it."""
    outputs = {r["name"]: r["outputs"] for r in results}
    assert COMPARING and set(COMPARING) <= set(outputs), (COMPARING, list(outputs))
    for name in COMPARING:
        text = outputs[name]
        assert " not installed: " in text and "To see it: pip install" in text, name   # it says what it skipped
        assert "pg_llm - transformers" not in text and "pg_llm - torch" not in text, name   # skipped, not faked


def test_no_notebook_imports_an_optional_package_unguarded():
    """Every import of torch, transformers, tokenizers or tiktoken sits under an optional() check."""
    for name in PRESENT:
        for i, cell in enumerate(load(name)["cells"]):
            for line in source(cell).splitlines():
                words = line.split()
                if words[:1] in (["import"], ["from"]) and words[1].split(".")[0] in OPTIONAL:
                    assert line.startswith((" ", "\t")), f"{name} cell {i}: {line!r} runs without optional()"


# ---- two learners at once --------------------------------------------------------------

# Everything a learner owns, as digests per table: rows whose model, split or name starts
# with the learner's prefix.  Any write to a model's weights bumps llm_model_config.version.
FINGERPRINT = {
    "models": "SELECT model, n_layer, n_head, n_embd, vocab_size, version FROM llm_model_config WHERE model LIKE %(p)s",
    "weights": "SELECT model, name, step, md5(llm_bytea(data)), md5(llm_bytea(grad)), md5(llm_bytea(m)) "
               "FROM llm_param WHERE model LIKE %(p)s",
    "train_log": "SELECT id, model, step, loss FROM llm_train_log WHERE model LIKE %(p)s",
    "tokenizers": "SELECT model, count(*), md5(string_agg(token || id, ',' ORDER BY id)) FROM llm_bpe_vocab "
                  "WHERE model LIKE %(p)s GROUP BY model",
    "datasets": "SELECT split, count(*), md5(string_agg(id || ':' || tokens::text, ',' ORDER BY id)) FROM llm_dataset "
                "WHERE split LIKE %(p)s GROUP BY split",
    "checkpoints": "SELECT id, model, step FROM llm_checkpoint WHERE model LIKE %(p)s",
    "tables": "SELECT tablename FROM pg_tables WHERE tablename LIKE %(p)s",
}


def fingerprint(conn, learner: str) -> dict[str, str]:
    """What `learner` owns, table by table, as sorted rows (so a difference can be shown)."""
    prefix = learner.replace("_", r"\_") + r"\_%"
    return {table: sorted(map(str, conn.execute(query, {"p": prefix}).fetchall()))
            for table, query in FINGERPRINT.items()}


def make_bystander(conn, learner: str, shared_rows: bool = True) -> list[int]:
    """A third learner's things, made before the class runs: a trained model, a tokenizer,
    a table and, if shared_rows, dataset rows in the splits everybody uses ('train', 'val'),
    whose ids it returns."""
    model = f"{learner}_gpt"
    conn.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size) "
                 "VALUES (%s, 1, 2, 16, 16, 64) ON CONFLICT (model) DO NOTHING", [model])
    conn.execute("SELECT llm_init(%s, 7)", [model])
    conn.execute("SELECT llm_train_step(%s, %s, %s, lr => 1e-3)", [model, [1, 2, 3, 4], [2, 3, 4, -100]])
    conn.execute("SELECT llm_bpe_train(%s, %s::text[], 300)", [f"{learner}_tokenizer", ["a class of learners"] * 5])
    conn.execute(f"CREATE TABLE IF NOT EXISTS {learner}_notes (note text)")
    conn.execute(f"INSERT INTO {learner}_notes VALUES ('mine')")
    if not shared_rows:
        return []
    return [row[0] for row in conn.execute(
        "INSERT INTO llm_dataset (tokens, target, split) VALUES (%s, %s, 'train'), (%s, %s, 'val') RETURNING id",
        [[1, 2], [2, -100], [3, 4], [4, -100]]).fetchall()]


def forget(conn, learners: list[str]) -> None:
    """Remove what the learners own (this test's, after it): models, tokenizers, splits, tables."""
    for learner in learners:
        prefix = learner + r"\_%"
        conn.execute("DELETE FROM llm_model_config WHERE model LIKE %s", [prefix])
        conn.execute("DELETE FROM llm_tokenizer WHERE model LIKE %s", [prefix])
        conn.execute("DELETE FROM llm_dataset WHERE split LIKE %s", [prefix])
        for (table,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                                     "AND tablename LIKE %s", [prefix]).fetchall():
            conn.execute(f"DROP TABLE {table}")


def shared_split_rows(conn) -> list:
    """The rows of the splits nobody owns (what the old notebooks deleted or moved)."""
    return conn.execute("SELECT id, split, tokens FROM llm_dataset WHERE split IN ('train', 'val') ORDER BY id").fetchall()


CHAIN = ("import json, sys; sys.path.insert(0, sys.argv[1]); import notebook_runs; "
         "print(json.dumps(notebook_runs.run_chain(sys.argv[2:])))")


@pytest.mark.slow
def test_two_learners_run_the_whole_path_at_once(db_url, conn, tmp_path):
    """alice and bob (JUPYTERHUB_USER) run every notebook of the path, in order, at the
    same time against one server, with short training runs (PG_LLM_LAB_QUICK=1), alice
    with PyTorch and bob without the optional packages.  Each chain must pass, bob's
    notebooks saying which comparisons they skipped; carol's things, made before, must
    be untouched, and so must the rows of the splits nobody owns; and what the first
    learner to finish owns must be unchanged when the other one finishes."""
    carol_rows = make_bystander(conn, "carol")
    carol_before, shared_before = fingerprint(conn, "carol"), shared_split_rows(conn)
    chains, finished, first = {}, {}, None
    try:
        for learner in ("alice", "bob"):
            env = {**os.environ, "JUPYTERHUB_USER": learner, "PG_LLM_LAB_QUICK": "1", "DATABASE_URL": db_url}
            if learner == "bob":    # bob has no PyTorch: `pip install -e .` only
                env = without_optional(env, tmp_path / "shim")
            with open(tmp_path / f"{learner}.out", "w") as out, open(tmp_path / f"{learner}.err", "w") as err:
                chains[learner] = subprocess.Popen([sys.executable, "-c", CHAIN, str(TESTS), *PRESENT],
                                                   env=env, stdout=out, stderr=err)
        deadline = time.monotonic() + 3600
        while len(finished) < len(chains):
            for learner, process in chains.items():
                if learner not in finished and process.poll() is not None:
                    finished[learner] = fingerprint(conn, learner)
                    first = first or learner
            assert time.monotonic() < deadline, "the two runs took over an hour"
            time.sleep(1)

        for learner in chains:
            out = (tmp_path / f"{learner}.out").read_text().strip()
            err = (tmp_path / f"{learner}.err").read_text()[-3000:]
            results = json.loads(out.splitlines()[-1]) if out else []
            print(f"{learner}:", ", ".join(f"{r['name'][:2]} {r['seconds']:.0f} s" for r in results))
            failed = [r for r in results if r["error"]]
            assert not failed, f"{learner}'s run failed in {failed[0]['name']}: {failed[0]['error']}"
            assert [r["name"] for r in results] == PRESENT, f"{learner}'s run stopped early:\n{err}"
            owns = finished[learner]
            assert owns["models"] and owns["tokenizers"] and owns["tables"], f"{learner} owns nothing: {owns}"
            if learner == "bob":
                check_ran_without_pytorch(results)
        assert fingerprint(conn, first) == finished[first], f"{first}'s things changed while the other learner ran"
        assert fingerprint(conn, "carol") == carol_before, "a learner's run changed carol's things"
        assert shared_split_rows(conn) == shared_before, "a learner's run changed the shared 'train'/'val' rows"
    finally:
        for process in chains.values():
            if process.poll() is None:
                process.kill()
        conn.execute("DELETE FROM llm_dataset WHERE id = ANY(%s)", [carol_rows])
        forget(conn, ["alice", "bob", "carol"])


def test_the_learners_fingerprint_sees_a_change(conn):
    """The control for the test above: a write to a model's weights changes its owner's fingerprint."""
    make_bystander(conn, "dora", shared_rows=False)
    try:
        before = fingerprint(conn, "dora")
        assert before["models"] and before["weights"] and before["train_log"] and before["tables"]
        conn.execute("UPDATE llm_param SET data = llm_scale(data, 2) WHERE model = 'dora_gpt' AND name = 'ln_f.bias'")
        after = fingerprint(conn, "dora")
        assert after["weights"] != before["weights"] and after["models"] != before["models"]  # the version moved
    finally:
        forget(conn, ["dora"])

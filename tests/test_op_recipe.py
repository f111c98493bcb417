"""Adding an op (extension/src/README.md): every op of autograd/op_list.h is
in every place an op must be, and each failure names the place it is missing
from.  Reads the sources only: no database, no compiler."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from pg_llm_lab import kernels

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "extension" / "src"
sys.path.insert(0, str(ROOT / "tools"))
import gen_upgrade_functions  # noqa: E402  (tools/ is no package)
OP_ENTRY = re.compile(r'TAPE_OP\((?P<kind>\w+), (?P<name>\w+), (?P<arity>\d+), (?:NULL|"(?P<sql>[^"]*)")\)')


def read(path: Path) -> str:
    return path.read_text()


def op_list() -> list[dict]:
    ops = [m.groupdict() for m in OP_ENTRY.finditer(read(SRC / "autograd" / "op_list.h"))]
    assert ops, "autograd/op_list.h lists no TAPE_OP(...) entries"
    return ops


def words(text: str) -> str:
    return " ".join(text.split())


def missing_places(op: dict) -> list[str]:
    """Where the op should appear and does not, as 'file: what is missing'."""
    name, kind, sql = op["name"], op["kind"], op["sql"]
    fn = f"llm_{name}"
    missing = []

    def need(ok: bool, place: str) -> None:
        if not ok:
            missing.append(place)

    ops_c = read(SRC / "ops" / "ops.c")
    need(re.search(rf"^{name}_backward\(const TapeOp \*op", ops_c, re.M) is not None,
         f"extension/src/ops/ops.c: static void {name}_backward(const TapeOp *op, ...)")
    need(re.search(rf"^const TapeOpMethods tape_{name} = {{[^}}]*\b{name}_backward}}", ops_c, re.M) is not None,
         f"extension/src/ops/ops.c: const TapeOpMethods tape_{name} = {{{name}_attrs, {name}_backward}} "
         f"(or {{.backward = {name}_backward}}: no attributes)")
    recorders = "\n".join(read(p) for p in SRC.rglob("*.c"))
    need(f"TAPE_OP_{kind}" in recorders, f"extension/src: a call that records TAPE_OP_{kind}")
    need(re.search(rf"\b{fn}\b", read(ROOT / "tests" / "test_autograd.py")) is not None,
         f"tests/test_autograd.py: gradients of {fn} against torch.autograd")

    if sql is not None:
        ops_sql = read(ROOT / "sql" / "10_ops.sql")
        need(re.search(rf"CREATE FUNCTION {fn}\(.*?AS 'MODULE_PATHNAME', '{fn}_sql'", ops_sql, re.S) is not None,
             f"sql/10_ops.sql: CREATE FUNCTION {fn}(...) AS 'MODULE_PATHNAME', '{fn}_sql'")
        need(f"COMMENT ON FUNCTION {fn}({sql}) IS" in words(ops_sql),
             f"sql/10_ops.sql: COMMENT ON FUNCTION {fn}({sql}) IS '...'")
        need(f"PG_FUNCTION_INFO_V1({fn}_sql);" in ops_c, f"extension/src/ops/ops.c: PG_FUNCTION_INFO_V1({fn}_sql)")
        need(f"TAPE_OP_{kind}" in ops_c, f"extension/src/ops/ops.c: {fn}_sql records TAPE_OP_{kind}")
        upgrade = gen_upgrade_functions.upgrade_script()
        signature = f"{fn}({sql})"
        need(signature in gen_upgrade_functions.commented(read(gen_upgrade_functions.previous_install(upgrade)))
             or signature in gen_upgrade_functions.commented(read(upgrade)),
             f"extension/releases/{upgrade.name}: CREATE FUNCTION {fn} (run python3 tools/gen_upgrade_functions.py)")
        for regress in ("test/sql/ops.sql", "test/expected/ops.out"):
            need(f"{fn}(" in read(ROOT / "extension" / regress), f"extension/{regress}: a pg_regress case of {fn}")
        need(re.search(rf"\b{fn}\b", read(ROOT / "tests" / "fuzz" / "test_fuzz_ops.py")) is not None,
             f"tests/fuzz/test_fuzz_ops.py: a fuzz target of {fn}")

    declared = kernels.prototypes(read(SRC / "kernels" / "kernels.h"))
    if fn in declared:
        kernel_tests = "\n".join(read(p) for p in (ROOT / "tests" / "kernels").glob("test_*.py"))
        for kernel in (fn, f"{fn}_backward"):
            need(kernel in declared, f"extension/src/kernels/kernels.h: {kernel}(...) beside {fn}")
            need(kernel in kernels.SIGNATURES,
                 f"pg_llm_lab/kernels.py: a ctypes type for every argument of {kernel} (_CTYPES)")
            need(re.search(rf"\b{kernel}\b", kernel_tests) is not None,
                 f"tests/kernels/: a parity test of {kernel} against PyTorch")
    return missing


@pytest.mark.parametrize("op", op_list(), ids=lambda op: op["name"])
def test_op_is_in_every_place(op):
    missing = missing_places(op)
    assert not missing, f"op {op['name']} is missing from:\n  " + "\n  ".join(missing)


def test_every_sql_op_is_in_the_op_list():
    listed = {f"llm_{op['name']}" for op in op_list()}
    declared = re.findall(r"CREATE FUNCTION (llm_\w+)\(", read(ROOT / "sql" / "10_ops.sql"))
    assert sorted(set(declared) - listed) == [], \
        "sql/10_ops.sql declares ops that extension/src/autograd/op_list.h does not list"


def test_every_kernel_family_has_a_table_per_isa():
    families = re.findall(r"FAMILY\((\w+)\)", read(SRC / "kernels" / "dispatch.h"))
    assert families, "kernels/dispatch.h: LLM_KERNEL_FAMILIES lists no FAMILY(...)"
    defined = "\n".join(read(p) for p in (SRC / "kernels").rglob("*.c"))
    missing = [f"{family}_{isa}_kernels" for family in families for isa in ("scalar", "avx2", "avx512")
               if not re.search(rf"\b{family}_kernels {family}_{isa}_kernels\s*=", defined)]
    assert not missing, "extension/src/kernels/ defines no " + ", ".join(missing)


def test_kernel_signatures_cover_the_headers():
    """Every function kernels.h and optim.h declare is bound, but those taking a
    callback or LlmChunks (the pool's and the chunker's internals)."""
    internal = {"llm_parallel_for", "llm_chunks_init", "llm_chunks_free", "llm_chunk_at", "llm_chunks_combine"}
    declared = set()
    for header in ("kernels.h", "optim.h"):
        declared |= set(kernels.prototypes(read(SRC / "kernels" / header)))
    assert sorted(declared - internal - set(kernels.SIGNATURES)) == []
    assert internal <= declared, "the internal functions named here are no longer declared: update the list"


def test_a_missing_place_is_named():
    """The check itself: an op listed but nowhere else is reported place by place."""
    op = {"kind": "FROBNICATE", "name": "frobnicate", "arity": "1", "sql": "tensor"}
    missing = missing_places(op)
    for place in ("ops/ops.c: static void frobnicate_backward", "ops/ops.c: const TapeOpMethods tape_frobnicate",
                  "CREATE FUNCTION llm_frobnicate (run python3 tools/gen_upgrade_functions.py)",
                  "sql/10_ops.sql: COMMENT ON FUNCTION llm_frobnicate(tensor)",
                  "ops/ops.c: PG_FUNCTION_INFO_V1(llm_frobnicate_sql)", "test/sql/ops.sql",
                  "test/expected/ops.out", "test_fuzz_ops.py", "test_autograd.py"):
        assert any(place in m for m in missing), place

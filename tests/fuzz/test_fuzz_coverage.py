"""Every function of the extension is fuzzed somewhere (a file's COVERS), or
named here with the reason it is not.  A new SQL function fails this test
until it gets a fuzz target (or a reason)."""
import importlib

FUZZ_FILES = ["test_fuzz_tensor_io", "test_fuzz_ops", "test_fuzz_files", "test_fuzz_gpt2", "test_fuzz_train"]

NOT_FUZZED = {
    "llm_info": "no arguments",
    "llm_info_text": "no arguments",
    "llm_param_check": "a trigger: runs on every llm_param write of the import and init fuzzing",
    "llm_param_bump_version": "a trigger: runs on every llm_param write of the import and init fuzzing",
    "llm_init_std": "called by llm_init with the names of llm_param_shapes only",
    "llm_write_text_file": "writes config.json in llm_export_hf, which is fuzzed",
    "llm_replay": "PL/pgSQL over llm_checkpoint_load and llm_train_step, both fuzzed; its checks are in "
                  "tests/test_train_loop.py",
    "llm_train_state_tensor": "internal: an error outside a write-back; runs in every write-back of llm_train_step and "
                              "llm_train, which test_fuzz_train fuzzes",
}


def test_every_function_is_fuzzed(db):
    functions = {name for (name,) in db.run("""
        SELECT DISTINCT p.proname FROM pg_depend d
        JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_llm'
        JOIN pg_proc p ON p.oid = d.objid
        WHERE d.classid = 'pg_proc'::regclass AND d.deptype = 'e'""").rows}
    covered = set().union(*(importlib.import_module(f).COVERS for f in FUZZ_FILES))
    missing = functions - covered - set(NOT_FUZZED)
    assert not missing, (f"functions of pg_llm no fuzz test covers: {sorted(missing)} -- add a target to "
                         "tests/fuzz (and its name to that file's COVERS), or a reason to NOT_FUZZED")
    stale = (covered | set(NOT_FUZZED)) - functions
    assert not stale, f"tests/fuzz names functions the extension does not have: {sorted(stale)}"

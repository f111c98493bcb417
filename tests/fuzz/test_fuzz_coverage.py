"""Every function of the extension is fuzzed somewhere (a file's COVERS), or
named here with the reason it is not.  A new SQL function fails this test
until it gets a fuzz target (or a reason)."""
import importlib

FUZZ_FILES = ["test_fuzz_tensor_io", "test_fuzz_ops", "test_fuzz_files", "test_fuzz_gpt2", "test_fuzz_generation",
              "test_fuzz_text", "test_fuzz_train", "test_fuzz_autograd", "test_fuzz_train_step"]

NOT_FUZZED = {
    "llm_info": "no arguments",
    "llm_info_text": "no arguments",
    "llm_param_check": "a trigger: runs on every llm_param write of the import and init fuzzing",
    "llm_param_bump_version": "a trigger: runs on every llm_param write of the import and init fuzzing",
    "llm_param_bump_moved": "a trigger: runs when an UPDATE moves a row to another model (pg_regress model.sql)",
    "llm_init_std": "called by llm_init with the names of llm_param_shapes only",
    "llm_write_text_file": "writes config.json in llm_export_hf, which is fuzzed",
    "llm_replay": "PL/pgSQL over llm_checkpoint_load and llm_train_step, both fuzzed; its checks are in "
                  "tests/test_train_loop.py",
    "llm_model_config_check": "a trigger: runs on every llm_model_config write of the config fuzzing",
    "llm_model_config_new_version": "a trigger: runs on every llm_model_config write of the config fuzzing",
    "llm_tokenizer_bump_version": "a trigger: runs on every tokenizer write of the loader and training fuzzing",
    "llm_require_arg": "the NULL check of the PL/pgSQL functions, whose NULL arguments are fuzzed",
    "llm_train_head": "reads llm_train_lineage by model name: test_fuzz_null_args calls it with NULL and "
                      "a model; tests/test_train_resume.py checks what it returns",
    "llm_commit_durably": "no arguments; tests/test_durability.py crashes the server after each caller",
    "llm_tokenizer_cache": "no arguments",
    "llm_tokenizer_cache_clear": "no arguments",
    "pg_llm_load_bpe": "damaged vocab.json/merges.txt files: tests/test_tokenizer_errors.py::test_fuzz_loaders",
    "pg_llm_load_bpe_vocab": "damaged vocab.json files: tests/test_tokenizer_errors.py::test_fuzz_loaders",
    "pg_llm_load_bpe_merges": "damaged merges.txt files: tests/test_tokenizer_errors.py::test_fuzz_loaders",
    "llm_export_tokenizer": "writes llm_bpe_vocab_json/llm_bpe_merges_txt (fuzzed) to a file; "
                            "tests/test_tokenizer_train.py loads them into GPT2TokenizerFast",
    "llm_is_instructor": "no arguments",
    "llm_tape_forget": "no arguments",
    "llm_classroom_init": "no arguments",
    "llm_classroom_defaults": "no arguments",
    "llm_name_check": "a trigger: tests/test_classroom.py::test_names_have_one_owner",
    "llm_dataset_name_check": "a trigger: tests/test_classroom.py::test_names_have_one_owner",
    "llm_only_sharing": "a trigger: tests/test_classroom.py::test_the_instructor_reads_everything_and_changes_nothing",
    "llm_share": "tests/test_classroom.py: NULLs, unknown, hidden and shared models",
    "llm_require_model_owner": "tests/test_classroom.py: NULL, unknown, hidden and shared models",
    "llm_require_superuser": "tests/test_classroom.py::test_null_and_unknown_arguments",
    "llm_classroom_add_learner": "tests/test_classroom.py::test_null_and_unknown_arguments",
    "llm_classroom_apply_settings": "tests/test_classroom.py::test_null_and_unknown_arguments",
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

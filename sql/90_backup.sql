-- pg_llm: what pg_dump keeps.
--
-- pg_dump takes an extension's tables for its own install-time content and
-- dumps none of their rows, unless the extension marks them as user data.
-- Every table a learner fills is marked here, with the sequences that number
-- its rows and versions, so that pg_dump / pg_restore (and pg_dumpall) carry
-- models, parameters with their AdamW state, tokenizers, datasets, logs,
-- gradient statistics and checkpoints.  The row CREATE EXTENSION makes
-- (gpt2-small's shapes) is left out: the restore's CREATE EXTENSION makes it.
-- The tape (llm_tape_all, llm_tensor_rt_all) is not marked: it is the
-- scratch state of sessions, which a restore does not bring back.
-- tests/test_backup.py checks that every table is one or the other.

SELECT pg_extension_config_dump('llm_model_config', 'WHERE model <> ''gpt2-small''');
SELECT pg_extension_config_dump('llm_param', '');
SELECT pg_extension_config_dump('llm_param_version_seq', '');
SELECT pg_extension_config_dump('llm_tokenizer', '');
SELECT pg_extension_config_dump('llm_bpe_vocab', '');
SELECT pg_extension_config_dump('llm_bpe_merges', '');
SELECT pg_extension_config_dump('llm_tokenizer_version_seq', '');
SELECT pg_extension_config_dump('llm_dataset', '');
SELECT pg_extension_config_dump('llm_dataset_id_seq', '');
SELECT pg_extension_config_dump('llm_train_log', '');
SELECT pg_extension_config_dump('llm_train_log_id_seq', '');
SELECT pg_extension_config_dump('llm_grad_stats', '');
SELECT pg_extension_config_dump('llm_checkpoint', '');
SELECT pg_extension_config_dump('llm_checkpoint_id_seq', '');
SELECT pg_extension_config_dump('llm_checkpoint_param', '');
SELECT pg_extension_config_dump('llm_train_lineage', '');
SELECT pg_extension_config_dump('llm_train_lineage_id_seq', '');
SELECT pg_extension_config_dump('llm_train_run', '');

-- pg_llm: a class on one server -- roles, owners, row-level security, sharing.
--
--   SELECT llm_classroom_init();                 -- once, as a superuser
--   SELECT llm_classroom_add_learner('alice');   -- a LOGIN role IN ROLE llm_learner
--   SELECT llm_share('alice_gpt');               -- every learner may read it now
--
-- A learner is any role IN ROLE llm_learner, an instructor any role IN ROLE
-- llm_instructor (which is IN ROLE llm_learner too: an instructor trains and
-- shares models of their own).  Every row of user data has an owner: the
-- role that made it (an owner column, default current_user), or -- for the
-- rows that belong to a model, a tokenizer or a checkpoint -- the owner of
-- that.  Row-level security lets a role see and change its own rows, read
-- what is shared, and an instructor read everything.  It is ENABLEd, not
-- FORCEd: it does not apply to a superuser nor to the tables' owner, so a
-- single learner on a laptop (a superuser) sees no difference.
--
-- The C code reads and writes through SPI as the calling role, so through
-- these policies.  One guarantee the shared weight cache relies on: a role
-- sees a model's llm_param rows exactly when it sees the model's
-- llm_model_config row (llm_param's policies ask llm_model_config, whose
-- own policies answer).  The same holds for a tokenizer and its vocab and
-- merges, a checkpoint and its parameters.
--
-- A name of a model, a tokenizer or a dataset has one owner in a database:
-- the first role to use a name owns it (llm_name_check says who holds it).

-- ---- who is who ------------------------------------------------------------------

CREATE FUNCTION llm_is_instructor() RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, @extschema@, pg_temp AS $$
    SELECT coalesce(pg_has_role(to_regrole('llm_instructor'), 'USAGE'), false)
$$;
COMMENT ON FUNCTION llm_is_instructor() IS
'true when the current role is a member of llm_instructor (false when that role does not exist yet)';

-- ---- names: one owner each ---------------------------------------------------------

-- Row security hides another role's rows, so a learner who picks a name a
-- neighbour already uses would get a bare duplicate-key error (or none, for
-- datasets, whose name is not a key).  These triggers look at every row,
-- which is why they run as the extension's owner; they tell only who holds
-- the name.
CREATE FUNCTION llm_name_check() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, @extschema@, pg_temp AS $$
DECLARE
    holder name;
BEGIN
    IF TG_TABLE_NAME = 'llm_model_config' THEN
        SELECT c.owner INTO holder FROM llm_model_config c WHERE c.model = NEW.model AND c.owner <> NEW.owner;
    ELSE
        SELECT t.owner INTO holder FROM llm_tokenizer t WHERE t.model = NEW.model AND t.owner <> NEW.owner;
    END IF;
    IF FOUND THEN
        RAISE EXCEPTION '%: the name "%" is taken: it belongs to %', TG_TABLE_NAME, NEW.model, holder
            USING ERRCODE = 'unique_violation',
                  HINT = 'Names are shared by everyone in this database: choose another '
                         '(the notebooks put yours first: pg_llm_lab.course.mine()).';
    END IF;
    RETURN NEW;
END $$;
COMMENT ON FUNCTION llm_name_check() IS
'trigger on llm_model_config and llm_tokenizer: refuse a name another role owns, saying whose it is';

CREATE TRIGGER llm_model_config_name BEFORE INSERT OR UPDATE OF model, owner ON llm_model_config
    FOR EACH ROW EXECUTE FUNCTION llm_name_check();
CREATE TRIGGER llm_tokenizer_name BEFORE INSERT OR UPDATE OF model, owner ON llm_tokenizer
    FOR EACH ROW EXECUTE FUNCTION llm_name_check();

CREATE FUNCTION llm_dataset_name_check() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, @extschema@, pg_temp AS $$
DECLARE
    clash record;
BEGIN
    SELECT n.dataset, d.owner INTO clash
    FROM (SELECT DISTINCT dataset, owner FROM new_rows) n
    JOIN llm_dataset d ON d.dataset = n.dataset AND d.owner <> n.owner
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'llm_dataset: the dataset name "%" is taken: it belongs to %', clash.dataset, clash.owner
            USING ERRCODE = 'unique_violation',
                  HINT = 'Names are shared by everyone in this database: choose another; '
                         'by default a dataset is named after you.';
    END IF;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION llm_dataset_name_check() IS
'trigger on llm_dataset, each statement: refuse rows under a dataset name another role owns, saying whose it is';

CREATE TRIGGER llm_dataset_name_ins AFTER INSERT ON llm_dataset
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION llm_dataset_name_check();
CREATE TRIGGER llm_dataset_name_upd AFTER UPDATE ON llm_dataset
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION llm_dataset_name_check();

-- An instructor may share or unshare anyone's model, tokenizer and dataset
-- rows (the policies instructors_share below), and change nothing else.
CREATE FUNCTION llm_only_sharing() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, @extschema@, pg_temp AS $$
BEGIN
    IF OLD.owner <> current_user AND row_security_active(TG_RELID)
       AND to_jsonb(NEW) - 'shared' - 'version' IS DISTINCT FROM to_jsonb(OLD) - 'shared' - 'version' THEN
        RAISE EXCEPTION '%: a row of % may only be shared or unshared by others than its owner',
            TG_TABLE_NAME, OLD.owner
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;
COMMENT ON FUNCTION llm_only_sharing() IS
'trigger: a role that updates a row it does not own (an instructor) may change its shared flag, nothing else';

CREATE TRIGGER llm_model_config_only_sharing BEFORE UPDATE ON llm_model_config
    FOR EACH ROW EXECUTE FUNCTION llm_only_sharing();
CREATE TRIGGER llm_tokenizer_only_sharing BEFORE UPDATE ON llm_tokenizer
    FOR EACH ROW EXECUTE FUNCTION llm_only_sharing();
CREATE TRIGGER llm_dataset_only_sharing BEFORE UPDATE ON llm_dataset
    FOR EACH ROW EXECUTE FUNCTION llm_only_sharing();

-- ---- the policies ------------------------------------------------------------------
--
-- its_owner (every command): the rows the current role owns.
-- readers (SELECT): what is shared, and everything for an instructor.
-- instructors_share (UPDATE): an instructor flips `shared` (llm_only_sharing).
-- (SELECT llm_is_instructor()) is evaluated once per statement, not per row.

ALTER TABLE llm_model_config ENABLE ROW LEVEL SECURITY;
CREATE POLICY its_owner ON llm_model_config USING (owner = current_user);
CREATE POLICY readers ON llm_model_config FOR SELECT USING (shared OR (SELECT llm_is_instructor()));
CREATE POLICY instructors_share ON llm_model_config FOR UPDATE USING ((SELECT llm_is_instructor()));
COMMENT ON POLICY its_owner ON llm_model_config IS 'a role reads and changes the models it registered';
COMMENT ON POLICY readers ON llm_model_config IS 'everyone reads a shared model; an instructor reads all';
COMMENT ON POLICY instructors_share ON llm_model_config IS 'an instructor may share anyone''s model (only that)';

ALTER TABLE llm_tokenizer ENABLE ROW LEVEL SECURITY;
CREATE POLICY its_owner ON llm_tokenizer USING (owner = current_user);
CREATE POLICY readers ON llm_tokenizer FOR SELECT USING (shared OR (SELECT llm_is_instructor()));
CREATE POLICY instructors_share ON llm_tokenizer FOR UPDATE USING ((SELECT llm_is_instructor()));
COMMENT ON POLICY its_owner ON llm_tokenizer IS 'a role reads and changes the tokenizers it made';
COMMENT ON POLICY readers ON llm_tokenizer IS 'everyone reads a shared tokenizer; an instructor reads all';
COMMENT ON POLICY instructors_share ON llm_tokenizer IS 'an instructor may share anyone''s tokenizer (only that)';

ALTER TABLE llm_dataset ENABLE ROW LEVEL SECURITY;
CREATE POLICY its_owner ON llm_dataset USING (owner = current_user);
CREATE POLICY readers ON llm_dataset FOR SELECT USING (shared OR (SELECT llm_is_instructor()));
CREATE POLICY instructors_share ON llm_dataset FOR UPDATE USING ((SELECT llm_is_instructor()));
COMMENT ON POLICY its_owner ON llm_dataset IS 'a role reads and changes the dataset rows it made';
COMMENT ON POLICY readers ON llm_dataset IS 'everyone reads a shared dataset; an instructor reads all';
COMMENT ON POLICY instructors_share ON llm_dataset IS 'an instructor may share anyone''s dataset (only that)';

-- A model's parameters, logs and gradient statistics are the model's owner's,
-- and readable by whoever reads the model.
ALTER TABLE llm_param ENABLE ROW LEVEL SECURITY;
CREATE POLICY its_owner ON llm_param
    USING (EXISTS (SELECT FROM llm_model_config c WHERE c.model = llm_param.model AND c.owner = current_user));
CREATE POLICY readers ON llm_param FOR SELECT
    USING (EXISTS (SELECT FROM llm_model_config c WHERE c.model = llm_param.model));
COMMENT ON POLICY its_owner ON llm_param IS 'the model''s owner reads and changes its parameters';
COMMENT ON POLICY readers ON llm_param IS 'whoever reads the model''s llm_model_config row reads its parameters';

ALTER TABLE llm_train_log ENABLE ROW LEVEL SECURITY;
CREATE POLICY its_owner ON llm_train_log
    USING (EXISTS (SELECT FROM llm_model_config c WHERE c.model = llm_train_log.model AND c.owner = current_user));
CREATE POLICY readers ON llm_train_log FOR SELECT
    USING (EXISTS (SELECT FROM llm_model_config c WHERE c.model = llm_train_log.model));
COMMENT ON POLICY its_owner ON llm_train_log IS 'the model''s owner reads and writes its log';
COMMENT ON POLICY readers ON llm_train_log IS 'whoever reads the model reads its log';

ALTER TABLE llm_train_lineage ENABLE ROW LEVEL SECURITY;
CREATE POLICY its_owner ON llm_train_lineage
    USING (EXISTS (SELECT FROM llm_model_config c WHERE c.model = llm_train_lineage.model AND c.owner = current_user));
CREATE POLICY readers ON llm_train_lineage FOR SELECT
    USING (EXISTS (SELECT FROM llm_model_config c WHERE c.model = llm_train_lineage.model));
COMMENT ON POLICY its_owner ON llm_train_lineage IS 'the model''s owner reads and writes the history of its weights';
COMMENT ON POLICY readers ON llm_train_lineage IS 'whoever reads the model reads the history of its weights';

ALTER TABLE llm_train_run ENABLE ROW LEVEL SECURITY;
CREATE POLICY its_owner ON llm_train_run
    USING (EXISTS (SELECT FROM llm_model_config c WHERE c.model = llm_train_run.model AND c.owner = current_user));
CREATE POLICY readers ON llm_train_run FOR SELECT
    USING (EXISTS (SELECT FROM llm_model_config c WHERE c.model = llm_train_run.model));
COMMENT ON POLICY its_owner ON llm_train_run IS 'the model''s owner reads and writes its named runs';
COMMENT ON POLICY readers ON llm_train_run IS 'whoever reads the model reads its named runs';

ALTER TABLE llm_grad_stats ENABLE ROW LEVEL SECURITY;
CREATE POLICY its_owner ON llm_grad_stats
    USING (EXISTS (SELECT FROM llm_model_config c WHERE c.model = llm_grad_stats.model AND c.owner = current_user));
CREATE POLICY readers ON llm_grad_stats FOR SELECT
    USING (EXISTS (SELECT FROM llm_model_config c WHERE c.model = llm_grad_stats.model));
COMMENT ON POLICY its_owner ON llm_grad_stats IS 'the model''s owner reads and writes its gradient statistics';
COMMENT ON POLICY readers ON llm_grad_stats IS 'whoever reads the model reads its gradient statistics';

ALTER TABLE llm_bpe_vocab ENABLE ROW LEVEL SECURITY;
CREATE POLICY its_owner ON llm_bpe_vocab
    USING (EXISTS (SELECT FROM llm_tokenizer t WHERE t.model = llm_bpe_vocab.model AND t.owner = current_user));
CREATE POLICY readers ON llm_bpe_vocab FOR SELECT
    USING (EXISTS (SELECT FROM llm_tokenizer t WHERE t.model = llm_bpe_vocab.model));
COMMENT ON POLICY its_owner ON llm_bpe_vocab IS 'the tokenizer''s owner reads and changes its vocabulary';
COMMENT ON POLICY readers ON llm_bpe_vocab IS 'whoever reads the tokenizer reads its vocabulary';

ALTER TABLE llm_bpe_merges ENABLE ROW LEVEL SECURITY;
CREATE POLICY its_owner ON llm_bpe_merges
    USING (EXISTS (SELECT FROM llm_tokenizer t WHERE t.model = llm_bpe_merges.model AND t.owner = current_user));
CREATE POLICY readers ON llm_bpe_merges FOR SELECT
    USING (EXISTS (SELECT FROM llm_tokenizer t WHERE t.model = llm_bpe_merges.model));
COMMENT ON POLICY its_owner ON llm_bpe_merges IS 'the tokenizer''s owner reads and changes its merges';
COMMENT ON POLICY readers ON llm_bpe_merges IS 'whoever reads the tokenizer reads its merges';

-- Checkpoints stay private (an instructor reads them): llm_share shares a
-- model's current weights, not its history.
ALTER TABLE llm_checkpoint ENABLE ROW LEVEL SECURITY;
CREATE POLICY its_owner ON llm_checkpoint USING (owner = current_user);
CREATE POLICY readers ON llm_checkpoint FOR SELECT USING ((SELECT llm_is_instructor()));
COMMENT ON POLICY its_owner ON llm_checkpoint IS 'a role reads, loads and deletes the checkpoints it saved';
COMMENT ON POLICY readers ON llm_checkpoint IS 'an instructor reads every checkpoint';

ALTER TABLE llm_checkpoint_param ENABLE ROW LEVEL SECURITY;
CREATE POLICY its_owner ON llm_checkpoint_param
    USING (EXISTS (SELECT FROM llm_checkpoint k
                   WHERE k.id = llm_checkpoint_param.checkpoint AND k.owner = current_user));
CREATE POLICY readers ON llm_checkpoint_param FOR SELECT
    USING (EXISTS (SELECT FROM llm_checkpoint k WHERE k.id = llm_checkpoint_param.checkpoint));
COMMENT ON POLICY its_owner ON llm_checkpoint_param IS 'the checkpoint''s owner reads and writes its parameters';
COMMENT ON POLICY readers ON llm_checkpoint_param IS 'whoever reads the checkpoint reads its parameters';

-- The tape: a session's own, and an instructor's to read.
ALTER TABLE llm_tape_all ENABLE ROW LEVEL SECURITY;
CREATE POLICY its_owner ON llm_tape_all USING (owner = current_user);
CREATE POLICY readers ON llm_tape_all FOR SELECT USING ((SELECT llm_is_instructor()));
COMMENT ON POLICY its_owner ON llm_tape_all IS 'a role reads and writes the tapes it recorded';
COMMENT ON POLICY readers ON llm_tape_all IS 'an instructor reads every session''s tape';

ALTER TABLE llm_tensor_rt_all ENABLE ROW LEVEL SECURITY;
CREATE POLICY its_owner ON llm_tensor_rt_all USING (owner = current_user);
CREATE POLICY readers ON llm_tensor_rt_all FOR SELECT USING ((SELECT llm_is_instructor()));
COMMENT ON POLICY its_owner ON llm_tensor_rt_all IS 'a role reads and writes the tapes it recorded';
COMMENT ON POLICY readers ON llm_tensor_rt_all IS 'an instructor reads every session''s tape';

-- ---- sharing --------------------------------------------------------------------------

CREATE FUNCTION llm_share(model text, shared boolean DEFAULT true)
RETURNS TABLE (kind text, name text)
LANGUAGE plpgsql SET search_path = pg_catalog, @extschema@, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    p_model text := model;
    holder name;
    datasets text[];
BEGIN
    PERFORM llm_require_arg('llm_share', 'model', p_model IS NULL);
    PERFORM llm_require_arg('llm_share', 'shared', shared IS NULL);
    SELECT c.owner INTO holder FROM llm_model_config c WHERE c.model = p_model;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'llm_share: unknown model "%"', p_model
            USING ERRCODE = 'undefined_object', HINT = 'Models are registered in llm_model_config.';
    END IF;
    IF holder <> current_user AND row_security_active('llm_model_config') AND NOT llm_is_instructor() THEN
        RAISE EXCEPTION 'llm_share: model "%" belongs to %: only its owner or an instructor may share it',
            p_model, holder
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    -- its datasets: the one named like it, and those its logged steps drew from
    SELECT array_agg(DISTINCT d.dataset) INTO datasets
    FROM llm_dataset d
    WHERE d.owner = holder
      AND (d.dataset = p_model
           OR d.id IN (SELECT b FROM llm_train_log l, unnest(l.batch) AS b WHERE l.model = p_model));

    UPDATE llm_model_config c SET shared = shared WHERE c.model = p_model AND c.shared <> shared;
    RETURN QUERY SELECT 'model', p_model;
    UPDATE llm_tokenizer t SET shared = shared WHERE t.model = p_model AND t.owner = holder AND t.shared <> shared;
    RETURN QUERY SELECT 'tokenizer', t.model FROM llm_tokenizer t WHERE t.model = p_model AND t.owner = holder;
    UPDATE llm_dataset d SET shared = shared
    WHERE d.dataset = ANY (datasets) AND d.owner = holder AND d.shared <> shared;
    RETURN QUERY SELECT 'dataset', unnest(datasets);
END $$;
COMMENT ON FUNCTION llm_share(text, boolean) IS
'make a model, its tokenizer (of the same name) and its datasets (the one named like it, and those its logged '
'training steps drew from) readable by every role (shared => false: private again); returns what it '
'changed. Read-only: only the owner trains, imports into or deletes them. The model''s owner or an '
'instructor may call it';

-- ---- the class ------------------------------------------------------------------------

CREATE FUNCTION llm_require_superuser(p_function text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, @extschema@, pg_temp AS $$
BEGIN
    PERFORM llm_require_arg('llm_require_superuser', 'p_function', p_function IS NULL);
    IF NOT (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = current_user) THEN
        RAISE EXCEPTION '%: only a superuser may run it', p_function
            USING ERRCODE = 'insufficient_privilege';
    END IF;
END $$;
COMMENT ON FUNCTION llm_require_superuser(text) IS
'internal: raise an error (42501) unless the current role is a superuser';

-- What a learner's sessions get unless the instructor changes it: settings of
-- the role llm_learner.  PostgreSQL applies ALTER ROLE ... SET to the role
-- that logs in, not to the groups it is in, so llm_classroom_init and
-- llm_classroom_add_learner copy llm_learner's settings to every learner.
--   ALTER ROLE llm_learner SET pg_llm.threads = 2;  SELECT llm_classroom_init();
CREATE FUNCTION llm_classroom_defaults(OUT setting text, OUT value text)
RETURNS SETOF record
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, @extschema@, pg_temp AS $$
    VALUES ('pg_llm.threads', '1'),                         -- one core each: 30 learners, not 30 x cores
           ('statement_timeout', '10min'),                  -- a runaway query ends
           ('idle_in_transaction_session_timeout', '30min'), -- a forgotten BEGIN releases its locks
           ('pg_llm.max_tape_rows', '20000')                -- a tape in mode full stays bounded
$$;
COMMENT ON FUNCTION llm_classroom_defaults() IS
'the settings llm_classroom_init gives the role llm_learner when it has none of that name yet';

CREATE FUNCTION llm_classroom_apply_settings(learner name) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, @extschema@, pg_temp AS $$
DECLARE
    entry text;
BEGIN
    PERFORM llm_require_superuser('llm_classroom_apply_settings');
    PERFORM llm_require_arg('llm_classroom_apply_settings', 'learner', learner IS NULL);
    FOR entry IN SELECT unnest(s.setconfig) FROM pg_db_role_setting s
                 WHERE s.setrole = 'llm_learner'::regrole AND s.setdatabase = 0
    LOOP
        EXECUTE format('ALTER ROLE %I SET %s = %L', learner, split_part(entry, '=', 1),
                       substr(entry, length(split_part(entry, '=', 1)) + 2));
    END LOOP;
END $$;
COMMENT ON FUNCTION llm_classroom_apply_settings(name) IS
'internal (llm_classroom_init, llm_classroom_add_learner): copy the settings of the role llm_learner '
'(ALTER ROLE llm_learner SET ...) to a learner''s own role';

CREATE FUNCTION llm_classroom_init() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, @extschema@, pg_temp AS $$
DECLARE
    schema name := (SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
                    WHERE e.extname = 'pg_llm');
    member record;
    d record;
BEGIN
    PERFORM llm_require_superuser('llm_classroom_init');
    PERFORM llm_info();     -- loads the library, so that its settings are known to ALTER ROLE
    IF to_regrole('llm_learner') IS NULL THEN
        CREATE ROLE llm_learner NOLOGIN;
    END IF;
    IF to_regrole('llm_instructor') IS NULL THEN
        CREATE ROLE llm_instructor NOLOGIN;
    END IF;
    COMMENT ON ROLE llm_learner IS 'pg_llm: its members train, share and read models of their own (llm_classroom_init)';
    COMMENT ON ROLE llm_instructor IS 'pg_llm: its members read every learner''s rows and may share any model';
    IF NOT pg_has_role('llm_instructor', 'llm_learner', 'MEMBER') THEN
        GRANT llm_learner TO llm_instructor;
    END IF;
    IF NOT pg_has_role('llm_instructor', 'pg_read_all_stats', 'MEMBER') THEN
        GRANT pg_read_all_stats TO llm_instructor;     -- what every session runs (pg_stat_activity)
    END IF;

    EXECUTE format('GRANT USAGE ON SCHEMA %I TO llm_learner', schema);
    FOR d IN SELECT c.oid::regclass AS rel, c.relkind
             FROM pg_depend dep JOIN pg_class c ON c.oid = dep.objid
             WHERE dep.refclassid = 'pg_extension'::regclass AND dep.classid = 'pg_class'::regclass
               AND dep.deptype = 'e' AND dep.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_llm')
               AND c.relkind IN ('r', 'v', 'S')
    LOOP
        EXECUTE format(CASE d.relkind WHEN 'r' THEN 'GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO llm_learner'
                                      WHEN 'v' THEN 'GRANT SELECT ON %s TO llm_learner'
                                      WHEN 'S' THEN 'GRANT USAGE, SELECT ON SEQUENCE %s TO llm_learner'
                       END, d.rel);
    END LOOP;

    FOR d IN SELECT * FROM llm_classroom_defaults() LOOP
        IF NOT EXISTS (SELECT FROM pg_db_role_setting s, unnest(s.setconfig) AS c
                       WHERE s.setrole = 'llm_learner'::regrole AND s.setdatabase = 0
                         AND split_part(c, '=', 1) = d.setting) THEN
            EXECUTE format('ALTER ROLE llm_learner SET %s = %L', d.setting, d.value);
        END IF;
    END LOOP;
    FOR member IN SELECT r.rolname FROM pg_roles r
                  WHERE r.rolcanlogin AND pg_has_role(r.oid, 'llm_learner', 'MEMBER')
                    AND NOT pg_has_role(r.oid, 'llm_instructor', 'MEMBER')
    LOOP
        PERFORM llm_classroom_apply_settings(member.rolname);
    END LOOP;
END $$;
COMMENT ON FUNCTION llm_classroom_init() IS
'make this database ready for a class (superuser; run it again any time, in each database the class uses): the '
'roles llm_learner and llm_instructor, their privileges on pg_llm''s tables here (and pg_read_all_stats for '
'instructors), and llm_learner''s settings (llm_classroom_defaults, or the instructor''s own) copied to every learner';

CREATE FUNCTION llm_classroom_add_learner(learner name, instructor boolean DEFAULT false) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, @extschema@, pg_temp AS $$
BEGIN
    PERFORM llm_require_superuser('llm_classroom_add_learner');
    PERFORM llm_require_arg('llm_classroom_add_learner', 'learner', learner IS NULL);
    PERFORM llm_require_arg('llm_classroom_add_learner', 'instructor', instructor IS NULL);
    IF to_regrole('llm_learner') IS NULL THEN
        PERFORM llm_classroom_init();
    END IF;
    IF to_regrole(quote_ident(learner)) IS NULL THEN
        EXECUTE format('CREATE ROLE %I LOGIN', learner);
    ELSIF (SELECT r.rolsuper OR r.rolbypassrls FROM pg_roles r WHERE r.rolname = learner) THEN
        RAISE EXCEPTION 'llm_classroom_add_learner: role "%" bypasses row-level security (a superuser)', learner
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A learner or an instructor must be an ordinary role.';
    END IF;
    EXECUTE format('GRANT %I TO %I', CASE WHEN instructor THEN 'llm_instructor' ELSE 'llm_learner' END, learner);
    -- a schema of their own, first on the default search_path ("$user"), for the tables they make
    EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I AUTHORIZATION %I', learner, learner);
    IF NOT instructor THEN
        PERFORM llm_classroom_apply_settings(learner);
    END IF;
END $$;
COMMENT ON FUNCTION llm_classroom_add_learner(name, boolean) IS
'make a LOGIN role (if missing) a learner (or, with instructor, an instructor), give it a schema of its own '
'and the class''s settings; superuser. Its password: ALTER ROLE ... PASSWORD, or pg-llm-lab classroom add-learner';

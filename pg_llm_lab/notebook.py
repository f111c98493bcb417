"""Notebook helpers: `%load_ext pg_llm_lab.notebook` (jupysql without noise), optional().

    %load_ext pg_llm_lab.notebook      # what `%load_ext sql` does, quietly
    %sql engine                        # engine = pg_llm_lab.engine()

Loading it loads jupysql's magics (`%sql`, `%%sql`, `<<` capture) exactly as
`%load_ext sql` does, except for three kinds of noise a learner should not
have to read past:

* jupysql looks for its settings in the nearest pyproject.toml -- the lab's
  own, which has none -- and without the `toml` package says so in every
  notebook ("The 'toml' package isn't installed ...").  Its settings are
  plain `%config SqlMagic.<name> = ...` lines here, so that search is
  skipped: whatever it displays while loading is dropped.
* A `%%sql` cell whose last statement returns no rows (DDL, INSERT,
  DELETE) shows an empty table; here it shows nothing.  Rows affected are
  not announced (SqlMagic.feedback = 0); set it back to 1 to see them.
* transformers logs warnings about generation settings (bos/eos/pad token
  ids) on every generate(); only errors are shown (TRANSFORMERS_VERBOSITY),
  and its progress bars ("Loading weights") are off
  (HF_HUB_DISABLE_PROGRESS_BARS): both unless already set.
"""

from __future__ import annotations

import os

QUIET_SETTINGS = {"feedback": 0, "displaycon": False}


def is_empty_result(result) -> bool:
    """A jupysql ResultSet of a statement that returns no columns (CREATE, INSERT, ...)."""
    from sql.run.resultset import ResultSet

    return isinstance(result, ResultSet) and not list(result.keys)


def quiet(magic):
    """`magic` (jupysql's %sql / %%sql function) returning None instead of an empty table."""

    def run(*args, **kwargs):  # (line[, cell][, local_ns=...]) as IPython calls magic
        result = magic(*args, **kwargs)
        return None if is_empty_result(result) else result

    run.__doc__ = magic.__doc__
    if getattr(magic, "needs_local_scope", False):  # jupysql reads the caller's variables
        run.needs_local_scope = True
    return run


def load_ipython_extension(ip) -> None:
    """%load_ext pg_llm_lab.notebook: jupysql's magics, quiet (see the module docstring)."""
    from IPython.utils.capture import capture_output

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")     # read when transformers is imported
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    with capture_output(stdout=False, stderr=False, display=True):
        # only what jupysql *displays* while loading: its config-file search
        ip.extension_manager.load_extension("sql")
    magics = ip.magics_manager.magics
    ip.register_magic_function(quiet(magics["line"]["sql"]), "line", "sql")
    ip.register_magic_function(quiet(magics["cell"]["sql"]), "cell", "sql")
    for name, value in QUIET_SETTINGS.items():
        ip.run_line_magic("config", f"SqlMagic.{name} = {value!r}")


# -- optional comparisons ------------------------------------------------------

INSTALL_HINT = "pip install 'pg_llm_lab[lab]'  (or: pip install torch==2.13.0 transformers)"


def optional(*modules: str, shown: str, install: str = INSTALL_HINT) -> bool:
    """Import `modules` for the comparison described by `shown`; True if all import.

    Without them, print which is missing and how to install it (`install`),
    and return False: the notebook skips the comparison and goes on.
    """
    import importlib

    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        print(f"{' and '.join(missing)} not installed: {shown} is skipped. To see it: {install}")
    return not missing

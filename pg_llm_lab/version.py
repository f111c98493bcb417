"""The release, of this package and of the pg_llm extension it installs.

extension/pg_llm.control's default_version is the same (tests/test_upgrade.py
checks it); pyproject.toml reads this one.  connect() updates a database
whose pg_llm is older (extension/releases/README.md).
"""

__version__ = "0.3.0"

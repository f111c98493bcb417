"""The `pg-llm-lab` command, run as a user runs it (against the session's server)."""
import os
import subprocess
import sys


def run_cli(db_url, *args):
    env = dict(os.environ, DATABASE_URL=db_url)
    return subprocess.run([sys.executable, "-m", "pg_llm_lab.cli", *args],
                          env=env, capture_output=True, text=True, timeout=300)


def test_url_and_errors(db_url):
    assert run_cli(db_url, "url").stdout.strip() == db_url
    bad = run_cli(db_url, "import-hf", "/no/such/folder", "m")
    assert bad.returncode == 2 and "error: no such folder: /no/such/folder" in bad.stderr


def test_import_hf_missing_folder(db_url, tmp_path, monkeypatch):
    """A path-like source that is not there is "no such folder" (exit 2), never a hub name;
    a bare name is not taken for a folder."""
    monkeypatch.chdir(tmp_path)
    bad = run_cli(db_url, "import-hf", "./my-gpt2", "m")
    assert bad.returncode == 2
    assert bad.stderr.strip() == "pg-llm-lab import-hf: error: no such folder: ./my-gpt2"
    assert run_cli(db_url, "import-hf", "sub/dir", "m").stderr.strip().endswith("no such folder: sub/dir")
    from pg_llm_lab import hf
    assert hf.missing_folder("gpt2") is None
    assert hf.missing_folder(str(tmp_path)) is None         # exists
    bare = run_cli(db_url, "import-hf", "gpt2", "m")
    assert bare.returncode == 1 and "no such checkpoint" in bare.stderr and "not downloaded" in bare.stderr


def test_load_tokenizer(db_url, tmp_path):
    """load-tokenizer sends GPT-2-format files over the connection."""
    from pg_llm_lab import tokenizer
    alphabet = sorted(tokenizer.bytes_to_unicode().values())
    (tmp_path / "vocab.json").write_text(tokenizer.vocab_json(alphabet + ["He", "Hel", "<|endoftext|>"]))
    (tmp_path / "merges.txt").write_text(tokenizer.merges_txt([("H", "e"), ("He", "l")]))
    result = run_cli(db_url, "load-tokenizer", str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"),
                     "--model", "cli_tok")
    try:
        assert result.returncode == 0, result.stderr
        assert "259 tokens, 2 merges" in result.stdout
        # "Hel" "l" "o" " " "w" "o" "r" "l" "d" "!": printable ASCII c is byte token ord(c) - 33, " " is 220
        assert "[257, 75, 78, 220, 86, 78, 81, 75, 67, 0]" in result.stdout
    finally:
        import psycopg
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("DELETE FROM llm_tokenizer WHERE model = 'cli_tok'")
    bad = run_cli(db_url, "load-tokenizer", str(tmp_path / "merges.txt"), str(tmp_path / "merges.txt"),
                  "--model", "cli_tok")
    assert bad.returncode == 1 and "error" in bad.stderr

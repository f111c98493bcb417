"""pg_llm_lab.course: the learner's names, check(), and the text the notebooks train on."""

import hashlib

import pytest

from pg_llm_lab import course


def test_the_learner_is_the_hub_user_else_the_role(conn, monkeypatch):
    monkeypatch.delenv("JUPYTERHUB_USER", raising=False)
    monkeypatch.delenv("PG_LLM_LAB_LEARNER", raising=False)
    role = conn.execute("SELECT current_user").fetchone()[0]
    assert course.learner(conn) == role.lower()
    monkeypatch.setenv("JUPYTERHUB_USER", "Ada Lovelace")
    assert course.learner(conn) == "ada_lovelace"
    assert course.mine(conn, "gpt") == "ada_lovelace_gpt"
    monkeypatch.setenv("JUPYTERHUB_USER", "42-bob")
    assert course.mine(conn, "Tape Demo") == "u42_bob_tape_demo"
    monkeypatch.delenv("JUPYTERHUB_USER")
    with pytest.raises(ValueError, match="pass a connection"):
        course.learner()


def test_check_says_what_went_wrong():
    course.check(1 + 1 == 2, "never shown")
    with pytest.raises(AssertionError, match="the loss should fall"):
        course.check(False, "the loss should fall")


@pytest.fixture
def no_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(course, "shakespeare_cache", lambda: tmp_path / "cache.txt")
    return tmp_path


def test_a_copy_that_does_not_match_its_sha256_is_never_used(no_cache, monkeypatch):
    fake = no_cache / "input.txt"
    fake.write_bytes(b"x" * course.SHAKESPEARE_BYTES)
    monkeypatch.setenv("PG_LLM_LAB_SHAKESPEARE", str(fake))
    assert course.tiny_shakespeare(download=False) is None


def test_offline_means_no_download(no_cache, monkeypatch):
    monkeypatch.delenv("PG_LLM_LAB_SHAKESPEARE", raising=False)
    monkeypatch.setenv("PG_LLM_LAB_OFFLINE", "1")
    monkeypatch.setattr(course.urllib.request, "urlopen",
                        lambda *a, **k: pytest.fail("downloaded although offline"))
    assert course.tiny_shakespeare() is None


def test_a_verified_download_is_cached(no_cache, monkeypatch):
    """The download path, fed the real bytes (from ../shared/data) instead of the network."""
    import os
    shared = os.environ.get("PG_LLM_LAB_SHAKESPEARE")
    if not shared:
        pytest.skip("../shared/data/tinyshakespeare/input.txt is not on this machine")
    data = open(shared, "rb").read()
    monkeypatch.delenv("PG_LLM_LAB_SHAKESPEARE")

    class Response:
        def __enter__(self): return self
        def __exit__(self, *exc): return False
        def read(self, n): return data[:n]

    monkeypatch.setattr(course.urllib.request, "urlopen", lambda url, timeout: Response())
    text = course.tiny_shakespeare(download=True)
    assert text.startswith("First Citizen:")
    assert hashlib.sha256(course.shakespeare_cache().read_bytes()).hexdigest() == course.SHAKESPEARE_SHA256
    monkeypatch.setattr(course.urllib.request, "urlopen", lambda *a, **k: pytest.fail("not cached"))
    assert course.tiny_shakespeare(download=True) == text


def test_without_shakespeare_the_text_is_the_offline_corpus(conn, no_cache, monkeypatch):
    monkeypatch.delenv("PG_LLM_LAB_SHAKESPEARE", raising=False)
    text, source = course.course_text(conn, download=False)
    assert "standard library" in source and len(text.encode()) > 400_000
    assert "Return" in text          # docstrings ...
    assert "PostgreSQL" in text or "postgres" in text.lower()  # ... and pg_description

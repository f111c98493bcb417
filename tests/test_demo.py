"""`pg-llm-lab demo`: the corpus it builds, its loss figure, and whole runs in the tiny setting."""
import dataclasses
import os
import re
import signal
import subprocess
import sys
import time

import psycopg

from pg_llm_lab import demo

SCORE = re.compile(r"validation \(([\d,]+) tokens, ([\d,]+) bytes of '[^']+'\): "
                   r"(\d+\.\d+) nats/token, (\d+\.\d+) nats/byte")
SECTIONS = ["== 1. corpus", "== 2. tokenizer", "== 3. dataset and model", "== 4. before training",
            "== 5. training", "== 6. after training", "== done"]


def run_demo(db_url, *args, **popen):
    env = dict(os.environ, DATABASE_URL=db_url)
    return subprocess.run([sys.executable, "-m", "pg_llm_lab.cli", "demo", "--tiny", *args], env=env,
                          capture_output=True, text=True, timeout=300, **popen)


def scores(out):
    """(nats/token, nats/byte) before and after training, as printed."""
    found = SCORE.findall(out)
    assert len(found) == 2, out
    return [(float(t), float(b)) for _, _, t, b in found]


def cleanup(db_url, model):
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DELETE FROM llm_checkpoint WHERE model = %s", [model])
        conn.execute("DELETE FROM llm_dataset WHERE split IN (%s, %s)", [f"{model}-train", f"{model}-val"])
        conn.execute("DELETE FROM llm_model_config WHERE model = %s", [model])
        conn.execute("DELETE FROM llm_tokenizer WHERE model = %s", [model])


def test_demo_end_to_end(db_url):
    """The tiny demo, as a user runs it with output to a pipe: every section, a lower
    validation loss after training, both samples twice, a checkpoint, no progress-bar spam."""
    model = "demo_e2e"
    try:
        result = run_demo(db_url, "--model", model)
        assert result.returncode == 0, result.stderr
        out = result.stdout
        positions = [out.find(title) for title in SECTIONS]
        assert -1 not in positions and positions == sorted(positions), out
        (before_tok, before_byte), (after_tok, after_byte) = scores(out)
        assert after_tok < before_tok and after_byte < before_byte
        # Untrained, the model is about as good as a uniform guess over the vocabulary.
        assert abs(before_tok - 5.768) < 0.2                            # ln 320
        for prompt in demo.PROMPTS:
            assert out.count(f"\n  {prompt!r} -> ") == 2, out
        assert "\r" not in out and "\r" not in result.stderr
        assert re.search(r"  step +40/40  loss \d", out)             # plain progress lines instead
        saved = int(re.search(r"-- checkpoint (\d+)", out)[1])
        with psycopg.connect(db_url) as conn:
            row = conn.execute("SELECT model, step FROM llm_checkpoint WHERE id = %s", [saved]).fetchone()
            logged = conn.execute("SELECT count(*) FROM llm_train_log WHERE model = %s", [model]).fetchone()[0]
        assert row == (model, 40) and logged == 40
        assert re.search(r"wall time \d+ s; validation \d\.\d{3} nats/byte \(reference: nanoGPT", out)
        assert "pg-llm-lab lab" in out and "pg-llm-lab psql" in out
    finally:
        cleanup(db_url, model)


def test_demo_corpus_file(db_url, tmp_path):
    """--corpus FILE trains on that file instead; a missing one is an error that names it."""
    model = "demo_file"
    words = ["alpha", "beta", "gamma", "delta", "table", "index", "query", "tensor"]
    text = "\n".join(" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(9)) + "."
                     for i in range(4000))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text)
    try:
        result = run_demo(db_url, "--model", model, "--corpus", str(corpus), "--steps", "30")
        assert result.returncode == 0, result.stderr
        assert f"{corpus}: {len(text.encode()) / 1e6:.2f} MB" in result.stdout
        assert "\n  'Return the' -> " not in result.stdout     # the prompts come from the file
        assert result.stdout.count(" -> '") == 4          # two prompts, before and after
        (before, _), (after, _) = scores(result.stdout)
        assert after < before - 1.0                  # a regular text is quickly learnt
    finally:
        cleanup(db_url, model)
    missing = run_demo(db_url, "--model", model, "--corpus", str(tmp_path / "nope.txt"))
    assert missing.returncode == 1 and f"no such file: {tmp_path / 'nope.txt'}" in missing.stderr


def test_demo_ctrl_c_keeps_the_logged_steps(db_url):
    """SIGINT during llm_train cancels the CALL; the committed steps stay and the demo says so."""
    model = "demo_cancel"
    env = dict(os.environ, DATABASE_URL=db_url, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "pg_llm_lab.cli", "demo", "--tiny", "--model", model,
                             "--steps", "100000"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops it" in line:
                break
        with psycopg.connect(db_url) as conn:
            deadline = time.monotonic() + 60
            while not conn.execute("SELECT count(*) FROM llm_train_log WHERE model = %s",
                                   [model]).fetchone()[0]:     # a step was committed
                assert time.monotonic() < deadline, "".join(lines)
                time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
        out = "".join(lines) + rest
        assert proc.returncode == 130, (out, err)
        kept = int(re.search(r"interrupted: (\d+) steps are logged in llm_train_log", out)[1])
        with psycopg.connect(db_url) as conn:
            logged = conn.execute("SELECT count(*) FROM llm_train_log WHERE model = %s", [model]).fetchone()[0]
            running = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CALL llm_train%%' "
                                   "AND state = 'active'").fetchone()[0]
        assert kept >= 1 and logged == kept and kept < 100000
        assert running == 0
        assert "== 6. after training" not in out
    finally:
        if proc.poll() is None:
            proc.kill()
        cleanup(db_url, model)


def test_stdlib_corpus_is_deterministic_and_skips_tests(tmp_path):
    """Files in sorted order, module then class then function docstrings, test folders and
    test_ files left out, whole docstrings up to the byte cap."""
    def module(path, doc, func_doc):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f'"""{doc}"""\n\ndef f():\n    """{func_doc}"""\n')

    long = "x" * 40
    module(tmp_path / "b.py", f"B module {long}", f"B function {long}")
    module(tmp_path / "a.py", f"A module {long}", f"A function {long}")
    module(tmp_path / "test" / "c.py", f"in test {long}", f"in test {long}")
    module(tmp_path / "pkg" / "test_d.py", f"a test {long}", f"a test {long}")
    module(tmp_path / "pkg" / "e.py", f"E module {long}", "short")
    (tmp_path / "broken.py").write_text("def (:\n")
    text = demo.stdlib_docstrings(10_000, tmp_path)
    assert text == "\n\n".join([f"A module {long}", f"A function {long}", f"B module {long}",
                                f"B function {long}", f"E module {long}"])
    assert demo.stdlib_docstrings(120, tmp_path) == f"A module {long}\n\nA function {long}"

    real = demo.stdlib_docstrings(200_000)
    assert real == demo.stdlib_docstrings(200_000)
    assert 190_000 < len(real.encode()) <= 200_000


def test_sparkline_and_plain_progress(capsys):
    assert demo.sparkline([1, 2, 3, 4, 5, 6, 7, 8]) == "▁▂▃▄▅▆▇█"
    assert demo.sparkline([3, 3]) == "▁▁"
    assert demo.sparkline(list(range(100)) + [float("nan")], width=10) == "▁▁▂▃▄▅▆▇██"
    assert demo.sparkline([]) == ""

    figure = demo.LossFigure(20, tty=False, out=sys.stdout)
    for done in range(1, 21):
        figure(done, 10 - done / 4)
    figure.close()
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"  step {d:>5}/20  loss {10 - d / 4:.3f}" for d in range(2, 21, 2)]
    assert figure.losses[0] == 9.75 and len(figure.losses) == 20


def test_a_step_is_timed_inside_one_call(conn):
    """step_seconds times a step as CALL llm_train runs it: from the log rows of one
    call, without the call's load and write-back, which it reports apart.  Checked
    against the marginal cost of a step (two calls of different lengths, timed here),
    and the timing call is undone: the weights of a fresh llm_init, no log rows."""
    settings = dataclasses.replace(demo.TINY, model="demo_timing", vocab=8000, n_embd=64, block=8, batch=2)
    conn.execute("DELETE FROM llm_dataset WHERE split = 'demo_timing-train'")
    conn.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size) "
                 "VALUES ('demo_timing', 1, 2, 64, 8, 8000)")
    try:
        conn.execute("SELECT llm_dataset_from_tokens(%s::int[], 8, NULL, 'demo_timing-train')",
                     [[(i * 37) % 8000 for i in range(400)]])
        conn.execute("SELECT llm_init('demo_timing', %s)", [settings.seed])
        initial = conn.execute("SELECT array_agg(md5(llm_bytea(data)) ORDER BY name) FROM llm_param "
                               "WHERE model = 'demo_timing'").fetchone()[0]

        def call_seconds(steps):
            tick = time.monotonic()
            conn.execute("CALL llm_train('demo_timing', %s, batch_size => 2, split => 'demo_timing-train', "
                         "notice_every => 0)", [steps])
            return time.monotonic() - tick

        marginal = (call_seconds(24) - call_seconds(4)) / 20
        per_step, once = demo.step_seconds(conn, settings)
        # (steps of a few ms: within 3x of each other, not the call's whole time, which `once` shows)
        assert marginal / 3 < per_step < 3 * marginal, (per_step, marginal)
        assert once > per_step         # 8000 x 64 weights loaded and written back, 16 tokens a step
        assert conn.execute("SELECT array_agg(md5(llm_bytea(data)) ORDER BY name) FROM llm_param "
                            "WHERE model = 'demo_timing'").fetchone()[0] == initial
        assert conn.execute("SELECT count(*) FROM llm_train_log WHERE model = 'demo_timing'").fetchone()[0] == 0
    finally:
        conn.execute("DELETE FROM llm_dataset WHERE split = 'demo_timing-train'")
        conn.execute("DELETE FROM llm_model_config WHERE model = 'demo_timing'")


def test_llm_init_reports_progress_on_big_models_only(conn):
    """llm_init says how far it is, a NOTICE per tenth, for a model of 10M values or
    more (seconds of work); a small model initialises silently."""
    notices = []
    conn.add_notice_handler(lambda diag: notices.append(diag.message_primary))
    try:
        conn.execute("INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size) "
                     "VALUES ('init_big', 1, 2, 256, 64, 40000), ('init_small', 1, 2, 32, 16, 300)")
        conn.execute("SELECT llm_init('init_small', 1)")
        assert notices == []
        total = conn.execute("SELECT sum(cardinality(real_array(data))) FROM llm_param "
                             "WHERE model = 'init_small'").fetchone()[0]
        assert total == 300 * 32 + 16 * 32 + 12 * 32 * 32 + 13 * 32 + 2 * 32     # wte, wpe, 1 block, ln_f
        conn.execute("SELECT llm_init('init_big', 1)")
        # wte (first) is 10.24M of the 11.05M values: 90 % comes at once.
        percents = [int(re.match(r'llm_init "init_big": (\d+) % \((\d+) of (\d+) values\), [\d.]+ s', n)[1])
                    for n in notices]
        assert percents == [90, 100], notices
        assert "(11046656 of 11046656 values)" in notices[-1]
    finally:
        conn.execute("DELETE FROM llm_model_config WHERE model IN ('init_big', 'init_small')")


def test_split_text_holds_out_every_tenth_paragraph():
    paragraphs = [f"paragraph {i}" for i in range(100)]
    train, val = demo.split_text("\n\n".join(paragraphs), 0.1)
    assert val == "\n\n".join(f"paragraph {i}" for i in range(9, 100, 10))
    assert train == "\n\n".join(f"paragraph {i}" for i in range(100) if i % 10 != 9)
    # Too few paragraphs to sample: the last tenth of the text, as nanoGPT.
    assert demo.split_text("abcdefghij" * 10, 0.1) == ("abcdefghij" * 9, "abcdefghij")


def test_demo_on_a_terminal_draws_a_bar_and_a_loss_line(db_url):
    """On a terminal (a pseudo-terminal here, 100 columns) the training shows tqdm's
    bar and, above it, a line with the loss so far as a sparkline, redrawn each step."""
    import fcntl
    import pty
    import struct
    import termios

    model = "demo_tty"
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    env = dict(os.environ, DATABASE_URL=db_url)
    proc = subprocess.Popen([sys.executable, "-m", "pg_llm_lab.cli", "demo", "--tiny", "--model", model],
                            env=env, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:             # the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout=120) == 0
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
        cleanup(db_url, model)
    out = b"".join(chunks).decode("utf-8", "replace")
    assert re.search(rf"training {model}: +100%\|.*\| 40/40", out), out
    redraws = re.findall(r"\rloss 5\.\d\d ([▁▂▃▄▅▆▇█]+) \d\.\d\d", out)
    assert len(redraws) >= 20 and len(redraws[-1]) == 40     # one character a step, up to 48
    assert "  step    40/40" not in out                      # no plain progress lines
    assert "== 6. after training" in out and "-- checkpoint " in out


def test_prompts_come_from_the_held_out_text_of_a_corpus_file():
    import dataclasses
    val = "MENENIUS:\nWhat work's, my countrymen, in hand?\n\n  Second Citizen:  Our business\n\n"
    assert demo.prompts(demo.DEFAULT, val) == demo.PROMPTS
    mine = dataclasses.replace(demo.DEFAULT, corpus="play.txt")
    assert demo.prompts(mine, val) == ["MENENIUS:", "Second Citizen: Our"]
    assert demo.prompts(mine, "") == demo.PROMPTS
    assert demo.prompts(mine, "ut off line\none two three four\n\n") == ["one two three"]
    # two held-out speeches of the same speaker give two different prompts
    assert demo.prompts(mine, "First Citizen:\nWe\n\nFirst Citizen:\nYou\n\nAll:\nNo\n\n") == \
        ["First Citizen:", "All:"]

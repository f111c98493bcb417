"""The `pg-llm-lab` command.

    pg-llm-lab install [--pg-config PATH]   build pg_llm and install it into PostgreSQL
    pg-llm-lab start   [--data DIR]         start the embedded server
    pg-llm-lab stop    [--data DIR]         stop it
    pg-llm-lab status  [--data DIR]         is it running? where? (exit 3 if not, like pg_ctl)
    pg-llm-lab url     [--data DIR]         print the connection URL (starts the server)
    pg-llm-lab psql    [--data DIR] [ARGS]  open psql on it (ARGS go to psql)
    pg-llm-lab demo    [--data DIR] [--corpus FILE] [--steps N] [--minutes M] [--model NAME] [--tiny]
                                            train a small GPT-2 in the database
    pg-llm-lab lab     [--data DIR] [--port N] [--no-browser] [--install-extras] [JUPYTER ARGS]
                                             the server and JupyterLab on the notebooks
    pg-llm-lab convert SRC OUT               HF checkpoint folder -> .npz / .safetensors
                                             (the server names the parameters)
    pg-llm-lab import-hf SRC NAME            load a HF checkpoint (folder or file) as model NAME
    pg-llm-lab export-hf NAME DIR            write model NAME as a HF folder
    pg-llm-lab load-tokenizer VOCAB MERGES --model NAME
                                             load GPT-2's vocab.json + merges.txt as tokenizer NAME
    pg-llm-lab classroom init                roles, row-level security and settings for a class
    pg-llm-lab classroom add-learner NAME... [--instructor] [--host H]
                                             LOGIN roles with new passwords; prints their DATABASE_URLs
    pg-llm-lab classroom status              who is connected, what each runs, memory per backend

start, url, psql, demo and lab first build pg_llm into the embedded PostgreSQL if
it is missing or older than its sources.  $DATABASE_URL, if set, replaces the
embedded server everywhere (and nothing is built).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys

import psycopg

from . import build, classroom, datasets, db, demo, hf, lab, server, tokenizer


def cmd_install(args) -> int:
    pg_config = build.find_pg_config(args.pg_config)
    print(f"building pg_llm with {pg_config} ...", flush=True)
    build.install_extension(pg_config, quiet=False)
    print(f"installed into {build.pg_config_value(pg_config, 'pkglibdir')}")
    return 0


def server_url(data) -> str:
    """Build pg_llm if needed (saying so), start the server; return its URL."""
    if not server.external_url() and not build.is_installed():
        print("building pg_llm (first run, or its sources changed) ...", file=sys.stderr, flush=True)
    return db.default_url(data=data)


def cmd_start(args) -> int:
    if server.external_url():
        print(f"DATABASE_URL is set: using {server.external_url()}")
    else:
        print(f"PostgreSQL is running: {server_url(args.data)}")
    return 0


def cmd_stop(args) -> int:
    if server.external_url():
        print("DATABASE_URL is set: that server is not managed by pg-llm-lab")
    elif server.stop(args.data):
        print("PostgreSQL stopped")
    else:
        print(f"PostgreSQL was not running ({server.data_dir(args.data)})")
    return 0


def cmd_status(args) -> int:
    info = server.status(args.data)
    for key, value in info.items():
        if value is not None:
            print(f"{key:12} {value}")
    return 0 if info["running"] else 3


def cmd_url(args) -> int:
    print(server_url(args.data))
    return 0


def cmd_psql(args) -> int:
    url = server_url(args.data)
    psql = (server.external_url() and shutil.which("psql")) or str(server.embedded_bin("psql"))
    sys.stdout.flush()
    os.execv(psql, [psql, url, *args.psql_args])  # replaces this process


def cmd_demo(args) -> int:
    settings = demo.TINY if args.tiny else demo.DEFAULT
    chosen = {key: value for key, value in [("model", args.model), ("corpus", args.corpus), ("steps", args.steps),
                                             ("minutes", args.minutes)] if value is not None}
    if args.steps is not None and args.minutes is None:
        chosen["minutes"] = None        # the steps asked for, however long they take
    return demo.run(server_url(args.data), dataclasses.replace(settings, **chosen))


def cmd_lab(args) -> int:
    return lab.run(args.data, port=args.port, no_browser=args.no_browser, notebooks=args.notebooks,
                   install_extras=args.install_extras, jupyter_args=args.psql_args)


def cmd_convert(args) -> int:
    with db.connect(server_url(args.data)) as conn:       # it names the parameters
        config = hf.convert(conn, args.src, args.out)
    out = os.path.abspath(args.out)
    name = args.name or os.path.basename(os.path.abspath(args.src))
    importer = "pg_llm_import_npz" if out.endswith(".npz") else "pg_llm_import_safetensors"
    print(f"wrote {out} ({os.path.getsize(out) / 1e6:.1f} MB)\n"
          f"to import it (the database server must be able to read the file):\n"
          f"  SELECT llm_register_hf_config('{name}', '{json.dumps(config)}');\n"
          f"  SELECT {importer}('{out}', '{name}');")
    return 0


def cmd_import_hf(args) -> int:
    missing = hf.missing_folder(args.src)
    if missing:
        print(f"pg-llm-lab import-hf: error: {missing}", file=sys.stderr)
        return 2
    with db.connect(server_url(args.data)) as conn:
        count = hf.import_hf(conn, args.src, args.name)
    print(f"imported {count} tensors as model {args.name!r}")
    return 0


def cmd_export_hf(args) -> int:
    with db.connect(server_url(args.data)) as conn:
        print(f"wrote {hf.export_hf(conn, args.name, args.dir)}")
    return 0


def cmd_load_tokenizer(args) -> int:
    with db.connect(server_url(args.data)) as conn:
        tokens, merges = tokenizer.load_tokenizer(conn, args.vocab, args.merges, args.model)
        ids = conn.execute("SELECT llm_encode('Hello world!', %s)", [args.model]).fetchone()[0]
    print(f"loaded tokenizer {args.model!r}: {tokens} tokens, {merges} merges\n"
          f"  SELECT llm_encode('Hello world!', '{args.model}');  -- {ids}")
    return 0


def cmd_prepare_dataset(args) -> int:
    with db.connect(server_url(args.data)) as conn:
        added = datasets.prepare_dataset(conn, args.files, args.model, args.block_size, stride=args.stride,
                                         val_fraction=args.val_fraction, dataset=args.dataset, progress=True)
        dataset = args.dataset or conn.execute("SELECT current_user").fetchone()[0]
    print(f"added {added} rows of {args.block_size} tokens to llm_dataset {dataset!r}\n"
          f"  SELECT split, count(*) FROM llm_dataset WHERE dataset = '{dataset}' GROUP BY split;\n"
          f"  SELECT * FROM llm_eval('{args.model}', 'val', dataset => '{dataset}');")
    return 0


def cmd_classroom(args) -> int:
    with db.connect(server_url(args.data)) as conn:
        if args.action == "init":
            classroom.init(conn)
            print("ready for a class: roles llm_learner and llm_instructor, row-level security on every "
                  "pg_llm table;\n  pg-llm-lab classroom add-learner NAME... makes the learners")
        elif args.action == "add-learner":
            if not args.names:
                print("pg-llm-lab classroom add-learner: error: name the learners", file=sys.stderr)
                return 2
            urls = classroom.add_learners(conn, args.names, instructor=args.instructor, host=args.host)
            print("each one's DATABASE_URL (a new password each time this runs):")
            for name, url in urls.items():
                print(f"  {name}: {url}")
        else:
            rows = classroom.status(conn)
            print(f"{len(rows)} other session(s)")
            for r in rows:
                memory = f"{r['memory_mb']:.0f} MB" if r["memory_mb"] is not None else "?"
                print(f"  {r['pid']:>7} {r['role']:<16} {r['is']:<10} {r['state'] or '':<20} "
                      f"{r['for'] or '':>8} {memory:>8}  {r['query'] or ''}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pg-llm-lab", description="pg_llm lab: GPT-2 inside PostgreSQL.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n")[-1])
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    install = commands.add_parser("install", help="build pg_llm and install it into PostgreSQL")
    install.add_argument("--pg-config", metavar="PATH",
                         help="pg_config of the target PostgreSQL (default: $PG_CONFIG, else the embedded one)")
    install.set_defaults(run=cmd_install)

    for name, run, help in [
        ("start", cmd_start, "start the embedded server (building pg_llm if needed)"),
        ("stop", cmd_stop, "stop the embedded server"),
        ("status", cmd_status, "show whether the server runs, its URL, pid and version"),
        ("url", cmd_url, "print the connection URL (starting the server if needed)"),
        ("psql", cmd_psql, "open psql on the server; further arguments go to psql"),
    ]:
        sub = commands.add_parser(name, help=help)
        sub.add_argument("--data", metavar="DIR",
                         help="data directory (default: $PG_LLM_LAB_DATA, else the user data dir)")
        sub.set_defaults(run=run)

    demo_cmd = commands.add_parser("demo", help="train a small GPT-2 in the database, in about 3 minutes")
    demo_cmd.add_argument("--data", metavar="DIR",
                          help="data directory (default: $PG_LLM_LAB_DATA, else the user data dir)")
    demo_cmd.add_argument("--corpus", metavar="FILE",
                          help="train on this UTF-8 text file (default: Python's docstrings + pg_description)")
    demo_cmd.add_argument("--steps", type=int, metavar="N", help="optimizer steps (default %d)" % demo.DEFAULT.steps)
    demo_cmd.add_argument("--minutes", type=float, metavar="M", help="fit the training into about M minutes (default %g)" % demo.DEFAULT.minutes)
    demo_cmd.add_argument("--model", metavar="NAME", help="the model's (and tokenizer's) name (default demo)")
    demo_cmd.add_argument("--tiny", action="store_true", help="a tiny model and a short run, in seconds")
    demo_cmd.set_defaults(run=cmd_demo)

    lab_cmd = commands.add_parser("lab", help="start the server and JupyterLab on the notebooks; "
                                  "further arguments go to JupyterLab")
    lab_cmd.add_argument("--data", metavar="DIR",
                         help="data directory (default: $PG_LLM_LAB_DATA, else the user data dir)")
    lab_cmd.add_argument("--port", type=int, help="JupyterLab's port (default: 8888 or the next free one)")
    lab_cmd.add_argument("--no-browser", action="store_true", help="don't open a web browser")
    lab_cmd.add_argument("--notebooks", metavar="DIR",
                         help="folder to open (default: notebooks/ of the repository checkout)")
    lab_cmd.add_argument("--install-extras", action="store_true",
                         help="pip install torch (CPU build) and transformers if missing, for the "
                              "notebooks' comparisons")
    lab_cmd.set_defaults(run=cmd_lab)

    convert = commands.add_parser("convert", help="turn a HuggingFace GPT-2 folder into .npz or .safetensors")
    convert.add_argument("src", help="HuggingFace folder (config.json + model.safetensors or pytorch_model.bin)")
    convert.add_argument("out", help="output file, .npz or .safetensors")
    convert.add_argument("--name", help="model name for the printed SQL (default: the folder's name)")

    import_hf = commands.add_parser("import-hf", help="load a HuggingFace GPT-2 checkpoint over the connection")
    import_hf.add_argument("src", help="HuggingFace folder, or a .safetensors / .npz file")
    import_hf.add_argument("name", help="model name in llm_model_config")
    export_hf = commands.add_parser("export-hf", help="write a model as a HuggingFace folder")
    export_hf.add_argument("name", help="model name in llm_model_config")
    export_hf.add_argument("dir", help="output folder (config.json + model.safetensors)")
    load_tok = commands.add_parser("load-tokenizer",
                                   help="load GPT-2's vocab.json and merges.txt over the connection")
    load_tok.add_argument("vocab", help="vocab.json (token -> id)")
    load_tok.add_argument("merges", help="merges.txt (one merge a line)")
    load_tok.add_argument("--model", required=True, help="tokenizer name (a model's name, e.g. gpt2)")
    prepare = commands.add_parser("prepare-dataset",
                                  help="encode text files with a model's tokenizer into llm_dataset")
    prepare.add_argument("files", nargs="+", help="UTF-8 text files (documents are joined by <|endoftext|>)")
    prepare.add_argument("--model", required=True, help="the tokenizer's (and model's) name")
    prepare.add_argument("--block-size", type=int, required=True, help="tokens per example")
    prepare.add_argument("--stride", type=int, help="tokens between example starts (default: block size)")
    prepare.add_argument("--val-fraction", type=float, default=0.1,
                         help="share of the tokens, at the end, for split 'val' (default 0.1)")
    prepare.add_argument("--dataset", help="the dataset's name (default: your role's name)")
    class_cmd = commands.add_parser("classroom", help="a class on one server: init, add-learner NAME..., status")
    class_cmd.add_argument("action", choices=["init", "add-learner", "status"])
    class_cmd.add_argument("names", nargs="*", metavar="NAME", help="add-learner: the learners' role names")
    class_cmd.add_argument("--instructor", action="store_true", help="add-learner: make them instructors")
    class_cmd.add_argument("--host", help="add-learner: the server's address in the printed URLs "
                                          "(default: as this connection reaches it)")
    for sub, run in ((convert, cmd_convert), (import_hf, cmd_import_hf), (export_hf, cmd_export_hf),
                     (load_tok, cmd_load_tokenizer), (prepare, cmd_prepare_dataset),
                     (class_cmd, cmd_classroom)):
        sub.add_argument("--data", metavar="DIR", help="data directory of the embedded server")
        sub.set_defaults(run=run)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args, extra = p.parse_known_args(argv)
    if extra and args.command not in ("psql", "lab"):
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    args.psql_args = extra
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return 130
    except (OSError, RuntimeError, ValueError, LookupError, psycopg.Error) as err:
        print(f"pg-llm-lab {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""pg_llm lab: GPT-2 trained and run inside PostgreSQL, taught through Jupyter.

    import pg_llm_lab
    conn = pg_llm_lab.connect()     # starts the embedded server, builds pg_llm
    conn.execute("SELECT llm_gelu('[[1,2],[3,4]]'::tensor)").fetchone()[0]   # an ndarray

Modules: server (the embedded PostgreSQL), build (compile pg_llm), db
(connections; updates an older pg_llm), adapters (numpy <-> tensor), hf
(HuggingFace checkpoints in and out), tokenizer (GPT-2's vocab.json /
merges.txt in and out), datasets (text files into llm_dataset), client
(PGLLMClient: generation, streaming, beam search, training), plots (loss
curves, live from llm_train_log), widgets (tape stepper, sampling
playground, training watcher, class view), course (what the notebooks share:
the learner's names, checks, the text, the trained model), notebook
(`%load_ext pg_llm_lab.notebook`: quiet %sql), demo (`pg-llm-lab demo`), lab
(`pg-llm-lab lab`), cli (the `pg-llm-lab` command).
"""

from .adapters import register_tensor
from .build import ensure_installed, find_pg_config, install_extension, is_installed
from .client import PGLLMClient
from .datasets import prepare_dataset
from .db import connect, engine
from .hf import export_hf, import_hf
from .server import data_dir, start, status, stop, url
from .tokenizer import export_tokenizer, load_tokenizer
from .version import __version__

__all__ = [
    "connect", "engine", "register_tensor", "import_hf", "export_hf", "load_tokenizer", "export_tokenizer",
    "prepare_dataset",
    "start", "stop", "status", "url", "data_dir",
    "install_extension", "ensure_installed", "is_installed", "find_pg_config",
    "PGLLMClient",
]

"""The client of the original pg_llm, under its name:

    from pg_llm_client import PGLLMClient

It is pg_llm_lab.client (see there).
"""

from pg_llm_lab.client import Beam, PGLLMClient, StreamEvent

__all__ = ["PGLLMClient", "StreamEvent", "Beam"]

# PostgreSQL 18 with the pg_llm extension, enabled in the default database.
#
#   docker build -t pg_llm .
#   docker run -d -e POSTGRES_PASSWORD=secret -p 5432:5432 pg_llm
#   DATABASE_URL=postgresql://postgres:secret@localhost/postgres pg-llm-lab demo
#
# With JupyterLab and the notebooks pointing at it: docker compose up
# (compose.yaml; the `lab` target below).
#
# Docker cannot run where this project is tested, so every RUN is a script
# or make target that .ci/run exercises on the host: docker/install-build-deps.sh
# and docker/initdb/10_pg_llm.sh in .ci/pg15, docker/install-lab.sh in
# .ci/binder, `make -C extension install` everywhere (tests/test_packaging.py
# checks this).

# ---- lab: JupyterLab and the notebooks, for a pg_llm server elsewhere ----------
FROM python:3.11-slim-bookworm AS lab
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /lab
COPY . /lab
RUN docker/install-lab.sh
# The server of compose.yaml, as its learner role (compose.yaml adds the password).
ENV DATABASE_URL=postgresql://learner@db:5432/postgres
EXPOSE 8888
CMD ["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser", "--allow-root", "notebooks"]

# ---- server: postgres:18 with pg_llm (the default target) ----------------------
FROM postgres:18 AS server
COPY docker /src/pg_llm/docker
RUN /src/pg_llm/docker/install-build-deps.sh --clean
COPY extension /src/pg_llm/extension
COPY sql /src/pg_llm/sql
RUN make -C /src/pg_llm/extension -j2 install \
 && make -C /src/pg_llm/extension clean
COPY docker/initdb/10_pg_llm.sh /docker-entrypoint-initdb.d/

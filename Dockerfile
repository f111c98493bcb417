# PostgreSQL 18 with the pg_llm extension compiled in.
#
#   docker build -t pg_llm .
#   docker run -d -e POSTGRES_PASSWORD=secret -p 5432:5432 pg_llm
#   DATABASE_URL=postgresql://postgres:secret@localhost/postgres pg-llm-lab demo
FROM postgres:18

RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential zlib1g-dev \
        postgresql-server-dev-18 \
 && rm -rf /var/lib/apt/lists/*

COPY extension /src/pg_llm/extension
COPY sql /src/pg_llm/sql
RUN make -C /src/pg_llm/extension -j"$(nproc)" install \
 && make -C /src/pg_llm/extension clean

# Every new database gets the extension.
RUN echo "CREATE EXTENSION IF NOT EXISTS pg_llm;" > /docker-entrypoint-initdb.d/10_pg_llm.sql

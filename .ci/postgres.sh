# Sourced by .ci/run: a real PostgreSQL for the tests, a throwaway cluster on loopback (Debian's server, as
# root on CI: installed when missing, run as the postgres user). Exports HARNESS_TEST_POSTGRES; the cluster
# is stopped and removed when .ci/run exits.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
PG_DIR=$(mktemp -d /tmp/harness-pg.XXXXXX)
PG_PORT=${HARNESS_PG_PORT:-54329}
chown postgres "$PG_DIR"
su postgres -s /bin/sh -c "$PG_BIN/initdb -D $PG_DIR/data -A trust -U postgres" >/dev/null
su postgres -s /bin/sh -c "$PG_BIN/pg_ctl -D $PG_DIR/data -l $PG_DIR/log -w start \
    -o '-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1'" >/dev/null
trap 'su postgres -s /bin/sh -c "$PG_BIN/pg_ctl -D $PG_DIR/data -m fast -w stop" >/dev/null; rm -rf "$PG_DIR"' EXIT
su postgres -s /bin/sh -c "$PG_BIN/createdb -h 127.0.0.1 -p $PG_PORT harness"
export HARNESS_TEST_POSTGRES="postgresql://postgres@127.0.0.1:$PG_PORT/harness"
echo "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT for the tests"

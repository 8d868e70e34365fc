#!/bin/sh
# Whether Synapse's database holds data, read without changing anything. Run
# as root on the PostgreSQL host: it asks as the OS user postgres over the
# UNIX socket (peer authentication), in read-only transactions, and prints one
# line:
#   no-server             no PostgreSQL server is set up on this port
#   no-database           the server has no such database
#   no-schema             the database has no Synapse tables (Synapse never ran)
#   data USERS EVENTS     the number of users, and 1 if any event exists, else 0
#   unreachable WHY       a server is set up but did not answer
# Arguments: the socket directory, the port, the database name.
set -u
socket_dir=$1 port=$2 database=$3
socket="$socket_dir/.s.PGSQL.$port"
cd / || exit 1

if [ ! -S "$socket" ]; then
  # Nothing listens on the socket. Data can still exist in a cluster that is
  # set up for this port but not running.
  if command -v pg_lsclusters >/dev/null 2>&1 \
    && pg_lsclusters --no-header 2>/dev/null | awk -v port="$port" '$3 == port { found = 1 } END { exit !found }'; then
    echo "unreachable a PostgreSQL cluster is set up on port $port but $socket is missing (is it running?)"
  else
    echo no-server
  fi
  exit 0
fi

# One statement from stdin, as the OS user postgres, read-only; stdout and
# stderr together, so a failure's reason can be reported.
query() {
  db=$1
  shift
  PGOPTIONS='-c default_transaction_read_only=on' runuser -u postgres -- \
    psql -X -q -A -t -v ON_ERROR_STOP=1 -h "$socket_dir" -p "$port" -d "$db" "$@" 2>&1
}

unreachable() {
  echo "unreachable $(printf '%s\n' "$1" | head -n 1)"
  exit 0
}

found=$(echo "SELECT count(*) FROM pg_database WHERE datname = :'database';" \
  | query postgres -v database="$database") || unreachable "$found"
[ "$found" = 1 ] || { echo no-database; exit 0; }

schema=$(echo "SELECT to_regclass('users') IS NOT NULL AND to_regclass('events') IS NOT NULL;" \
  | query "$database") || unreachable "$schema"
[ "$schema" = t ] || { echo no-schema; exit 0; }

counts=$(echo "SELECT (SELECT count(*) FROM users) || ' ' || (SELECT count(*) FROM (SELECT 1 FROM events LIMIT 1) AS any_event);" \
  | query "$database") || unreachable "$counts"
echo "data $counts"

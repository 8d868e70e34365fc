"""Waits until PostgreSQL accepts Synapse's own login, then exits 0.

Run by systemd before each Synapse process starts (ExecStartPre), as
Synapse's user and with Synapse's Python: argv is homeserver.yaml and the
seconds to wait at most. It connects with the `database.args` Synapse will
use (socket or TCP, the passfile). Synapse exits at once when the database
does not answer; waiting here instead means that a database that is down
(at boot, on another host) costs a cheap wait, not a crash loop that would
exhaust the unit's start limit. Exits 1 naming the last error when the time
is up; systemd then starts the unit again (Restart=always).
"""

import sys
import time

import psycopg2
import yaml


def connect_args(path):
    """psycopg2's arguments from homeserver.yaml, without Synapse's pool settings (cp_*)."""
    with open(path, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    args = config["database"]["args"]
    return {key: value for key, value in args.items() if not key.startswith("cp_")}


def main():
    args = connect_args(sys.argv[1])
    deadline = time.monotonic() + float(sys.argv[2])
    while True:
        try:
            psycopg2.connect(connect_timeout=5, **args).close()
            return 0
        except psycopg2.Error as error:
            last = str(error).strip()
        if time.monotonic() >= deadline:
            print(f"PostgreSQL did not accept Synapse's login within {sys.argv[2]} s: {last}", file=sys.stderr)
            return 1
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# Make a PostgreSQL server available on localhost for the multi-worker tuning tests, then print its URL.
#
# Idempotent: installs Debian's `postgresql` package only when the server binaries are missing,
# creates and starts the default cluster only when nothing answers on the port, and creates the
# role and database only when they do not exist. Safe to call before every `make test`.
# Needs root (or password-less sudo) for the install/start steps; a server that is already running
# and reachable as the `postgres` superuser (or already has the role and database) needs neither.
#
# Environment: MAMMOLAB_PG_PORT (5432), MAMMOLAB_PG_USER (mammolab), MAMMOLAB_PG_PASSWORD (mammolab),
# MAMMOLAB_PG_DB (mammolab).
set -euo pipefail

PORT="${MAMMOLAB_PG_PORT:-5432}"
USER_="${MAMMOLAB_PG_USER:-mammolab}"
PASS="${MAMMOLAB_PG_PASSWORD:-mammolab}"
DB="${MAMMOLAB_PG_DB:-mammolab}"
URL="postgresql://${USER_}:${PASS}@localhost:${PORT}/${DB}"

log() { echo "ci_postgres: $*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        log "need root or password-less sudo to run: $*"
        return 1
    fi
}

as_postgres() {
    # Run a command as the cluster's superuser over the local socket (peer authentication).
    if [ "$(id -u)" -eq 0 ]; then
        (cd /tmp && runuser -u postgres -- "$@")
    else
        (cd /tmp && sudo -n -u postgres "$@")
    fi
}

ready() { pg_isready -q -h localhost -p "$PORT" >/dev/null 2>&1; }

# Already usable with our credentials? Then there is nothing to do.
if command -v psql >/dev/null 2>&1 && PGPASSWORD="$PASS" PGCONNECT_TIMEOUT=3 \
        psql "$URL" -tAc 'SELECT 1' >/dev/null 2>&1; then
    log "server on localhost:${PORT} already accepts ${USER_}@${DB}"
    echo "$URL"
    exit 0
fi

if ! ready; then
    if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
        log "installing Debian's postgresql package"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    fi
    VER="$(ls /usr/lib/postgresql | sort -V | tail -n1)"
    if ! pg_lsclusters -h 2>/dev/null | awk -v v="$VER" -v p="$PORT" '$1==v && $3==p' | grep -q .; then
        log "creating cluster ${VER}/main on port ${PORT}"
        as_root pg_createcluster "$VER" main --port "$PORT" >&2
    fi
    CLUSTER="$(pg_lsclusters -h | awk -v p="$PORT" '$3==p {print $1" "$2; exit}')"
    log "starting cluster ${CLUSTER}"
    # pg_ctlcluster needs the socket directory, which a container without systemd may lack.
    as_root install -d -o postgres -g postgres -m 2775 /var/run/postgresql
    # shellcheck disable=SC2086
    as_root pg_ctlcluster $CLUSTER start >&2 || true
    for _ in $(seq 1 30); do
        ready && break
        sleep 1
    done
    if ! ready; then
        log "PostgreSQL did not come up on localhost:${PORT}; see /var/log/postgresql/"
        exit 1
    fi
fi

log "ensuring role ${USER_} and database ${DB}"
if ! as_postgres psql -p "$PORT" -tAc "SELECT 1 FROM pg_roles WHERE rolname='${USER_}'" | grep -q 1; then
    as_postgres psql -p "$PORT" -q -c "CREATE ROLE \"${USER_}\" LOGIN PASSWORD '${PASS}'" >&2
else
    as_postgres psql -p "$PORT" -q -c "ALTER ROLE \"${USER_}\" LOGIN PASSWORD '${PASS}'" >&2
fi
if ! as_postgres psql -p "$PORT" -tAc "SELECT 1 FROM pg_database WHERE datname='${DB}'" | grep -q 1; then
    as_postgres createdb -p "$PORT" -O "$USER_" "$DB" >&2
fi

if ! PGPASSWORD="$PASS" PGCONNECT_TIMEOUT=5 psql "$URL" -tAc 'SELECT 1' >/dev/null 2>&1; then
    log "server is up but ${URL%%:*}://${USER_}:***@localhost:${PORT}/${DB} refuses the login"
    exit 1
fi
echo "$URL"

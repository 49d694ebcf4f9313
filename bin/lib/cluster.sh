# Shared by bin/test and bin/demo: find (or install) PostgreSQL's server
# binaries and run a private cluster on a free loopback port.
# Source it; then call `cluster_start DIR` and `cluster_stop DIR`.
# After cluster_start: CLUSTER_PORT, CLUSTER_URL (database postgres).
# CLUSTER_PG_OPTS adds server options, e.g. for profiling:
#   CLUSTER_PG_OPTS="-c shared_preload_libraries=auto_explain -c auto_explain.log_min_duration=1s"

pg_bindir() {
    local d
    if command -v pg_config >/dev/null 2>&1; then
        d=$(pg_config --bindir 2>/dev/null || true)
        if [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
    fi
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
    done
    return 1
}

ensure_postgres() {
    if PGBIN=$(pg_bindir); then export PGBIN; return 0; fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "PostgreSQL server binaries not found; installing Debian's postgresql package" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
        if PGBIN=$(pg_bindir); then export PGBIN; return 0; fi
    fi
    echo "PostgreSQL server binaries (initdb, pg_ctl) are not installed." >&2
    echo "Install them (Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql)" >&2
    echo "or set DATABASE_URL to a server you can create databases on." >&2
    return 1
}

# Run a PostgreSQL binary as a user it accepts (initdb and postgres refuse root).
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# A port nothing listens on, below the kernel's ephemeral range: a port in
# that range can be taken at any moment by some client's outgoing
# connection, and then the server cannot bind it (seen in CI: "Address
# already in use" for a port that accepted no connection a moment before).
free_port() {
    local port low
    low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    [ "$low" -gt 21000 ] 2>/dev/null || low=32768
    for _ in $(seq 1 100); do
        port=$(( 20000 + RANDOM % (low - 20000) ))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"; return 0
        fi
    done
    echo "no free port found" >&2
    return 1
}

# cluster_start DIR: initdb DIR/pgdata if needed, start it on a free port.
cluster_start() {
    local dir=$1
    ensure_postgres || return 1
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || useradd --system --home "$dir" postgres
        chown postgres "$dir"
        chmod 755 "$dir"
        if ! runuser -u postgres -- test -w "$dir"; then
            echo "the postgres user cannot reach $dir (a parent directory is private); initdb must run as postgres" >&2
            return 1
        fi
    fi
    if [ ! -f "$dir/pgdata/PG_VERSION" ]; then
        as_pg "$PGBIN/initdb" --no-sync -A trust -U postgres -E UTF8 --locale=C -D "$dir/pgdata" >"$dir/initdb.log" 2>&1 || {
            cat "$dir/initdb.log" >&2; return 1; }
    fi
    if as_pg "$PGBIN/pg_ctl" -D "$dir/pgdata" status >/dev/null 2>&1; then
        CLUSTER_PORT=$(sed -n 4p "$dir/pgdata/postmaster.pid" | tr -d ' ')
    else
        # Another port if this one was taken between the check and the bind.
        local try
        for try in 1 2 3 4 5; do
            CLUSTER_PORT=$(free_port) || return 1
            if as_pg "$PGBIN/pg_ctl" -D "$dir/pgdata" -l "$dir/postgres.log" -w -t 60 \
                -o "-p $CLUSTER_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir -c max_connections=300 ${CLUSTER_PG_OPTS:-}" \
                start >/dev/null; then
                break
            fi
            if [ "$try" = 5 ] || ! tail -5 "$dir/postgres.log" | grep -q "Address already in use"; then
                tail -20 "$dir/postgres.log" >&2; return 1
            fi
        done
    fi
    CLUSTER_URL="postgres://postgres@127.0.0.1:$CLUSTER_PORT/postgres"
    export CLUSTER_PORT CLUSTER_URL
}

cluster_stop() {
    local dir=$1
    [ -f "$dir/pgdata/postmaster.pid" ] || return 0
    as_pg "$PGBIN/pg_ctl" -D "$dir/pgdata" -m fast -w stop >/dev/null 2>&1 || true
}

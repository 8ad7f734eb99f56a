# A private PostgreSQL for tests: its own data folder, a free port on loopback, stopped on exit. Sourced.

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

# start_private_postgres DIR: sets INCLOUD_TEST_POSTGRES_URL, registers stop in PG_STOP.
start_private_postgres() {
  local dir=$1 bin port
  bin=$(pg_bin); [ -n "$bin" ] || die "PostgreSQL server binaries not found"
  port=$(/usr/bin/python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
  mkdir -p "$dir"; chown postgres: "$dir" 2>/dev/null || true
  local run="" ; [ "$(id -u)" = 0 ] && run="runuser -u postgres --"
  $run "$bin/initdb" -D "$dir/data" -U incloud --auth=trust -E UTF8 >/dev/null || die "initdb failed"
  $run "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 \
       -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null \
       || { cat "$dir/log" >&2; die "PostgreSQL did not start"; }
  PG_STOP="$run $bin/pg_ctl -D $dir/data -m fast stop"
  export INCLOUD_TEST_POSTGRES_URL="postgresql+psycopg://incloud@127.0.0.1:$port/postgres"
  log "PostgreSQL on 127.0.0.1:$port"
}

stop_private_postgres() { [ -n "${PG_STOP:-}" ] && $PG_STOP >/dev/null 2>&1; PG_STOP=""; }

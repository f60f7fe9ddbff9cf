#!/usr/bin/env bash
# The servers Flumen's tests talk to, run on loopback. Source this file,
# then `start_services`; `stop_services` (or the EXIT trap it sets) stops
# them. What a server needs is installed once into ~/.cache/flumen.
#
#   S3 and DynamoDB APIs: moto server (PyPI, in a virtualenv); bucket `flumen-test`
#              -> FLUMEN_TEST_S3_ENDPOINT, FLUMEN_TEST_MOTO_SERVER (the binary,
#                 for tests that run their own server to pause it)
#   Kafka API: tansu broker (crates.io), in-memory storage
#              -> FLUMEN_TEST_KAFKA_BROKERS, FLUMEN_TEST_TANSU (the binary,
#                 for tests that run their own broker)
#   Kinesis API: kinesis-local (npm), in-memory; region us-east-1, any keys
#              -> FLUMEN_TEST_KINESIS (http://127.0.0.1:PORT)
#   Redis: redis-server (Debian package), append-only file on, no snapshots
#              -> FLUMEN_TEST_REDIS (redis://127.0.0.1:PORT, one server)
#              -> FLUMEN_TEST_REDIS_CLUSTER (redis://127.0.0.1:P1,redis://...:P2,
#                 redis://...:P3: a cluster of three masters, no replicas)
#              -> FLUMEN_TEST_REDIS_SERVER (the binary, for tests that run
#                 their own server to restart it)
#   A browser: headless chromium, driven by chromedriver over WebDriver
#              (Debian packages chromium and chromium-driver)
#              -> FLUMEN_TEST_WEBDRIVER (http://127.0.0.1:PORT),
#                 FLUMEN_TEST_CHROMIUM (the browser's binary)
#   Kubernetes manifests: kubernetes-validate (PyPI, in the same virtualenv),
#              the API's schemas, offline; not a server
#              -> FLUMEN_TEST_KUBERNETES_VALIDATE (the binary)
#
# Each service has a launch_ function, run in this shell (it installs what
# is missing, starts the server in the background and exports its
# variables), and a ready_ function that waits for the server; start_services
# runs the ready_ functions of all the services at once.

FLUMEN_CACHE="${FLUMEN_CACHE:-$HOME/.cache/flumen}"
# This directory: helper scripts beside this one.
FLUMEN_SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SERVICES_DIR="$(mktemp -d -t flumen-services.XXXXXX)"

# free_ports N [bus]: N distinct free ports, none handed out before by this
# file (the servers given earlier ones may not have bound them yet). With
# `bus`, each port is below 55535 and port+10000 is free and reserved too:
# a Redis Cluster node also listens there, for its cluster bus.
free_ports() {
  python3 - "$SERVICES_DIR/ports" "$@" <<'EOF'
import socket, sys
path, n, bus = sys.argv[1], int(sys.argv[2]), sys.argv[3:] == ["bus"]
try:
    with open(path) as f:
        used = {int(line) for line in f}
except FileNotFoundError:
    used = set()
def bindable(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False
held, ports = [], []  # sockets stay bound, so each port comes once
for _ in range(1000):
    if len(ports) == n:
        break
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    held.append(s)
    port = s.getsockname()[1]
    if port in used:
        continue
    if bus and (port >= 55535 or port + 10000 in used or not bindable(port + 10000)):
        continue
    ports.append(port)
    used.add(port)
    if bus:
        used.add(port + 10000)
for s in held:
    s.close()
if len(ports) < n:
    sys.exit("no free ports")
with open(path, "w") as f:
    f.writelines(f"{port}\n" for port in sorted(used))
print(*ports)
EOF
}

free_port() {
  free_ports 1
}

# wait_for NAME LOG COMMAND...: retries COMMAND for up to 60 s.
wait_for() {
  local name=$1 log=$2
  shift 2
  for _ in $(seq 1 300); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "$name did not start; its log:" >&2
  cat "$log" >&2
  return 1
}

launch_s3() {
  local venv="$FLUMEN_CACHE/venv"
  if ! "$venv/bin/moto_server" --help >/dev/null 2>&1; then
    echo "installing moto (an S3-API server for tests) into $venv"
    python3 -m venv "$venv" &&
      "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]" || return
  fi
  local port log="$SERVICES_DIR/moto.log"
  port=$(free_port) || return
  # moto with DynamoDB's conditional writes made atomic (see the script).
  "$venv/bin/python" "$FLUMEN_SCRIPTS/moto_server.py" -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
  echo $! >>"$SERVICES_DIR/pids"
  export FLUMEN_TEST_S3_ENDPOINT="http://127.0.0.1:$port"
  # For tests that run their own, to pause it (SIGSTOP) without holding up
  # the others.
  export FLUMEN_TEST_MOTO_SERVER="$venv/bin/moto_server"
}

ready_s3() {
  wait_for "moto" "$SERVICES_DIR/moto.log" curl -fsS "$FLUMEN_TEST_S3_ENDPOINT/" || return
  curl -fsS -X PUT "$FLUMEN_TEST_S3_ENDPOINT/flumen-test" >/dev/null || return
  echo "S3 API (moto) at $FLUMEN_TEST_S3_ENDPOINT, bucket flumen-test"
}

launch_kafka() {
  local tansu
  tansu=$(command -v tansu || echo "$HOME/.cargo/bin/tansu")
  if ! "$tansu" --help >/dev/null 2>&1; then
    echo "installing tansu (a Kafka-API broker for tests); this takes about 11 minutes, once"
    cargo install tansu --version 0.6.0 --locked --features dynostore,libsql || return
    tansu="$HOME/.cargo/bin/tansu"
  fi
  local port log="$SERVICES_DIR/tansu.log"
  port=$(free_port) || return
  "$tansu" broker --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >"$log" 2>&1 &
  echo $! >>"$SERVICES_DIR/pids"
  export FLUMEN_TEST_TANSU="$tansu"
  export FLUMEN_TEST_KAFKA_BROKERS="127.0.0.1:$port"
}

ready_kafka() {
  wait_for "tansu" "$SERVICES_DIR/tansu.log" \
    bash -c "exec 3<>/dev/tcp/${FLUMEN_TEST_KAFKA_BROKERS/://}" || return
  echo "Kafka API (tansu) at $FLUMEN_TEST_KAFKA_BROKERS"
}

launch_kinesis() {
  local dir="$FLUMEN_CACHE/kinesis-local"
  local pkg="$dir/node_modules/kinesis-local"
  if [ "$(node -p "require('$pkg/package.json').version" 2>/dev/null)" != 0.6.2 ]; then
    echo "installing kinesis-local (a Kinesis-API server for tests) into $dir"
    npm install --silent --no-fund --no-audit --prefix "$dir" kinesis-local@0.6.2 || return
  fi
  local port tls_port log="$SERVICES_DIR/kinesis-local.log"
  local ports
  ports=$(free_ports 2) || return
  read -r port tls_port <<<"$ports"
  # It always serves HTTPS as well, and on all interfaces: give that a free
  # port too. Stream changes (create, delete, split, merge, resize) finish at
  # once rather than after the default 500 ms, and the shard limit is raised
  # so that tests sharing the server can each create their own streams.
  (cd "$pkg" && exec env KINESIS_MOCK_PLAIN_PORT="$port" \
    KINESIS_MOCK_TLS_PORT="$tls_port" \
    CREATE_STREAM_DURATION=0ms DELETE_STREAM_DURATION=0ms \
    SPLIT_SHARD_DURATION=0ms MERGE_SHARDS_DURATION=0ms \
    UPDATE_SHARD_COUNT_DURATION=0ms UPDATE_STREAM_MODE_DURATION=0ms \
    REGISTER_STREAM_CONSUMER_DURATION=0ms DEREGISTER_STREAM_CONSUMER_DURATION=0ms \
    START_STREAM_ENCRYPTION_DURATION=0ms STOP_STREAM_ENCRYPTION_DURATION=0ms \
    SHARD_LIMIT=10000 ON_DEMAND_STREAM_COUNT_LIMIT=1000 \
    AWS_REGION=us-east-1 AWS_ACCOUNT_ID=000000000000 \
    node main.js) >"$log" 2>&1 &
  echo $! >>"$SERVICES_DIR/pids"
  export FLUMEN_TEST_KINESIS="http://127.0.0.1:$port"
}

ready_kinesis() {
  wait_for "kinesis-local" "$SERVICES_DIR/kinesis-local.log" \
    curl -fsS "$FLUMEN_TEST_KINESIS/healthcheck" || return
  echo "Kinesis API (kinesis-local) at $FLUMEN_TEST_KINESIS"
}

# Headless Chromium driven through WebDriver (chromedriver), for the
# console's browser test.
launch_browser() {
  if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    echo "installing chromium and chromium-driver (Debian packages)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver ||
      { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; } ||
      return
  fi
  local port log="$SERVICES_DIR/chromedriver.log"
  port=$(free_port) || return
  chromedriver --port="$port" >"$log" 2>&1 &
  echo $! >>"$SERVICES_DIR/pids"
  export FLUMEN_TEST_WEBDRIVER="http://127.0.0.1:$port"
  export FLUMEN_TEST_CHROMIUM="$(command -v chromium)"
}

ready_browser() {
  wait_for "chromedriver" "$SERVICES_DIR/chromedriver.log" \
    curl -fsS "$FLUMEN_TEST_WEBDRIVER/status" || return
  echo "WebDriver (chromedriver, headless chromium) at $FLUMEN_TEST_WEBDRIVER"
}

REDIS_CLUSTER_PORTS=()

launch_redis() {
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    echo "installing redis-server (Debian package)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server ||
      { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server; } ||
      return
  fi
  local server port dir
  server=$(command -v redis-server)
  port=$(free_port) || return
  dir="$SERVICES_DIR/redis"
  mkdir -p "$dir" || return
  "$server" --bind 127.0.0.1 --port "$port" --dir "$dir" --daemonize no \
    --appendonly yes --save '' >"$SERVICES_DIR/redis.log" 2>&1 &
  echo $! >>"$SERVICES_DIR/pids"
  export FLUMEN_TEST_REDIS="redis://127.0.0.1:$port"
  export FLUMEN_TEST_REDIS_SERVER="$server"

  local ports
  ports=$(free_ports 3 bus) || return
  read -r -a REDIS_CLUSTER_PORTS <<<"$ports"
  local urls=()
  for port in "${REDIS_CLUSTER_PORTS[@]}"; do
    dir="$SERVICES_DIR/redis-cluster-$port"
    mkdir -p "$dir" || return
    "$server" --bind 127.0.0.1 --port "$port" --dir "$dir" --daemonize no \
      --cluster-enabled yes --cluster-config-file nodes.conf \
      --appendonly yes --save '' >"$dir.log" 2>&1 &
    echo $! >>"$SERVICES_DIR/pids"
    urls+=("redis://127.0.0.1:$port")
  done
  FLUMEN_TEST_REDIS_CLUSTER=$(IFS=,; echo "${urls[*]}")
  export FLUMEN_TEST_REDIS_CLUSTER
}

redis_pong() {
  [ "$(redis-cli -p "$1" ping 2>/dev/null)" = PONG ]
}

redis_cluster_ok() {
  local port
  for port in "${REDIS_CLUSTER_PORTS[@]}"; do
    [[ $(redis-cli -p "$port" cluster info 2>/dev/null) == *cluster_state:ok* ]] || return
  done
}

ready_redis() {
  local port nodes=()
  wait_for "redis-server" "$SERVICES_DIR/redis.log" \
    redis_pong "${FLUMEN_TEST_REDIS##*:}" || return
  for port in "${REDIS_CLUSTER_PORTS[@]}"; do
    wait_for "redis-server (cluster node)" "$SERVICES_DIR/redis-cluster-$port.log" \
      redis_pong "$port" || return
    nodes+=("127.0.0.1:$port")
  done
  local log="$SERVICES_DIR/redis-cluster-create.log"
  if ! redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes \
    >"$log" 2>&1; then
    echo "redis-cli --cluster create failed:" >&2
    cat "$log" >&2
    return 1
  fi
  wait_for "Redis Cluster" "$log" redis_cluster_ok || return
  echo "Redis at $FLUMEN_TEST_REDIS"
  echo "Redis Cluster at $FLUMEN_TEST_REDIS_CLUSTER"
}

start_s3() { launch_s3 && ready_s3; }
start_kafka() { launch_kafka && ready_kafka; }
start_kinesis() { launch_kinesis && ready_kinesis; }
start_redis() { launch_redis && ready_redis; }

# Launches each server in turn, waiting for it (in the background) as soon
# as it is launched; the waits' output is shown once all are done, in order.
# Redis comes first: its cluster takes longest, a few seconds to form.
# The manifest validator, installed beside moto (after it: they share the
# virtualenv).
install_kubernetes_validate() {
  local venv="$FLUMEN_CACHE/venv"
  if ! "$venv/bin/kubernetes-validate" --version >/dev/null 2>&1; then
    echo "installing kubernetes-validate (Kubernetes manifests' schemas) into $venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate || return
  fi
  export FLUMEN_TEST_KUBERNETES_VALIDATE="$venv/bin/kubernetes-validate"
}

start_services() {
  trap stop_services EXIT
  local service pids=() failed_tools=0
  local services=(redis s3 kafka kinesis browser)
  for service in "${services[@]}"; do
    if ! "launch_$service"; then
      echo "$service: could not launch its server" >&2
      kill "${pids[@]}" 2>/dev/null || true
      return 1
    fi
    ("ready_$service") >"$SERVICES_DIR/ready-$service.out" 2>"$SERVICES_DIR/ready-$service.err" &
    pids+=($!)
  done
  install_kubernetes_validate || failed_tools=1
  local i failed=${failed_tools:-0}
  for i in "${!services[@]}"; do
    wait "${pids[$i]}" || failed=1
    cat "$SERVICES_DIR/ready-${services[$i]}.out"
    cat "$SERVICES_DIR/ready-${services[$i]}.err" >&2
  done
  return "$failed"
}

stop_services() {
  if [ -f "$SERVICES_DIR/pids" ]; then
    local pids
    mapfile -t pids <"$SERVICES_DIR/pids"
    kill "${pids[@]}" 2>/dev/null || true
    # Let them exit (Redis writes its append-only file on the way out)
    # before their directories go.
    local pid
    for pid in "${pids[@]}"; do
      for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
    done
  fi
  rm -rf "$SERVICES_DIR"
}

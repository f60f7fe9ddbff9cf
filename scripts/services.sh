#!/usr/bin/env bash
# The servers Flumen's tests talk to, run on loopback. Source this file,
# then `start_services`; `stop_services` (or the EXIT trap it sets) stops
# them. What a server needs is installed once into ~/.cache/flumen.
#
#   S3 and DynamoDB APIs: moto server (PyPI, in a virtualenv); bucket `flumen-test`
#              -> FLUMEN_TEST_S3_ENDPOINT, FLUMEN_TEST_S3_PID
#   Kafka API: tansu broker (crates.io), in-memory storage
#              -> FLUMEN_TEST_KAFKA_BROKERS, FLUMEN_TEST_TANSU (the binary,
#                 for tests that run their own broker)
#   Kinesis API: kinesis-local (npm), in-memory; region us-east-1, any keys
#              -> FLUMEN_TEST_KINESIS (http://127.0.0.1:PORT)

FLUMEN_CACHE="${FLUMEN_CACHE:-$HOME/.cache/flumen}"
SERVICES_DIR="$(mktemp -d -t flumen-services.XXXXXX)"

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
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

start_s3() {
  local venv="$FLUMEN_CACHE/venv"
  if ! "$venv/bin/moto_server" --help >/dev/null 2>&1; then
    echo "installing moto (an S3-API server for tests) into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]"
  fi
  local port log="$SERVICES_DIR/moto.log"
  port=$(free_port)
  "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
  echo $! >>"$SERVICES_DIR/pids"
  # For tests that pause the server (SIGSTOP) to see requests time out.
  export FLUMEN_TEST_S3_PID=$!
  export FLUMEN_TEST_S3_ENDPOINT="http://127.0.0.1:$port"
  wait_for "moto" "$log" curl -fsS "$FLUMEN_TEST_S3_ENDPOINT/"
  curl -fsS -X PUT "$FLUMEN_TEST_S3_ENDPOINT/flumen-test" >/dev/null
  echo "S3 API (moto) at $FLUMEN_TEST_S3_ENDPOINT, bucket flumen-test"
}

start_kafka() {
  local tansu
  tansu=$(command -v tansu || echo "$HOME/.cargo/bin/tansu")
  if ! "$tansu" --help >/dev/null 2>&1; then
    echo "installing tansu (a Kafka-API broker for tests); this takes about 11 minutes, once"
    cargo install tansu --version 0.6.0 --locked --features dynostore,libsql
    tansu="$HOME/.cargo/bin/tansu"
  fi
  local port log="$SERVICES_DIR/tansu.log"
  port=$(free_port)
  "$tansu" broker --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >"$log" 2>&1 &
  echo $! >>"$SERVICES_DIR/pids"
  export FLUMEN_TEST_TANSU="$tansu"
  export FLUMEN_TEST_KAFKA_BROKERS="127.0.0.1:$port"
  wait_for "tansu" "$log" bash -c "exec 3<>/dev/tcp/127.0.0.1/$port"
  echo "Kafka API (tansu) at $FLUMEN_TEST_KAFKA_BROKERS"
}

start_kinesis() {
  local dir="$FLUMEN_CACHE/kinesis-local"
  local pkg="$dir/node_modules/kinesis-local"
  if [ "$(node -p "require('$pkg/package.json').version" 2>/dev/null)" != 0.6.2 ]; then
    echo "installing kinesis-local (a Kinesis-API server for tests) into $dir"
    npm install --silent --no-fund --no-audit --prefix "$dir" kinesis-local@0.6.2
  fi
  local port tls_port log="$SERVICES_DIR/kinesis-local.log"
  port=$(free_port)
  tls_port=$(free_port)
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
  wait_for "kinesis-local" "$log" curl -fsS "$FLUMEN_TEST_KINESIS/healthcheck"
  echo "Kinesis API (kinesis-local) at $FLUMEN_TEST_KINESIS"
}

start_services() {
  trap stop_services EXIT
  start_s3
  start_kafka
  start_kinesis
}

stop_services() {
  if [ -f "$SERVICES_DIR/pids" ]; then
    xargs kill <"$SERVICES_DIR/pids" 2>/dev/null || true
  fi
  rm -rf "$SERVICES_DIR"
}

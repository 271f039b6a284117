#!/usr/bin/env bash
# A real single-node OpenSearch for tests, benchmarks and local use.
#
#   scripts/opensearch.sh fetch    # download the minimal distribution once (Maven Central, cached in ~/.m2)
#   scripts/opensearch.sh start    # install if needed, start on 127.0.0.1:$OPENSEARCH_PORT, wait for health
#   scripts/opensearch.sh status   # exit 0 when it answers
#   scripts/opensearch.sh stop
#
# The distribution is org.opensearch.distribution.integ-test-zip:opensearch (no bundled JDK, no
# security plugin); it runs on the machine's Java 17. OpenSearch refuses to run as root, so as
# root it runs as the dedicated user $OPENSEARCH_USER (created if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=${OPENSEARCH_VERSION:-2.19.1}
PORT=${OPENSEARCH_PORT:-9200}
HEAP=${OPENSEARCH_HEAP:-512m}
RUN_USER=${OPENSEARCH_USER:-kdreranker-os}
BASE=${OPENSEARCH_DIR:-$PWD/.opensearch}
HOME_DIR="$BASE/opensearch-$VERSION"
DATA_DIR="$BASE/data-$PORT"
PID_FILE="$BASE/opensearch-$PORT.pid"
ZIP="$HOME/.m2/repository/org/opensearch/distribution/integ-test-zip/opensearch/$VERSION/opensearch-$VERSION.zip"
URL="http://127.0.0.1:$PORT"

log() { echo "opensearch.sh: $*" >&2; }

fetch() {
  if [ -f "$ZIP" ]; then return; fi
  command -v mvn >/dev/null || { log "mvn is needed to fetch OpenSearch $VERSION from Maven Central"; exit 1; }
  log "fetching org.opensearch.distribution.integ-test-zip:opensearch:$VERSION:zip"
  mvn -q dependency:get -Dartifact="org.opensearch.distribution.integ-test-zip:opensearch:$VERSION:zip" -Dtransitive=false
  [ -f "$ZIP" ] || { log "download finished but $ZIP is missing"; exit 1; }
}

java_home() {
  if [ -n "${OPENSEARCH_JAVA_HOME:-}" ]; then echo "$OPENSEARCH_JAVA_HOME"; return; fi
  local java
  java=$(command -v java) || { log "java (17+) is needed"; exit 1; }
  dirname "$(dirname "$(readlink -f "$java")")"
}

install() {
  fetch
  if [ ! -x "$HOME_DIR/bin/opensearch" ]; then
    log "installing into $HOME_DIR"
    mkdir -p "$BASE"
    rm -rf "$HOME_DIR.tmp" && mkdir "$HOME_DIR.tmp"
    (cd "$HOME_DIR.tmp" && unzip -q "$ZIP")
    mv "$HOME_DIR.tmp/opensearch-$VERSION" "$HOME_DIR" && rmdir "$HOME_DIR.tmp"
  fi
  mkdir -p "$DATA_DIR/data" "$DATA_DIR/logs" "$DATA_DIR/config"
  cp -r "$HOME_DIR/config/." "$DATA_DIR/config/"
  cat > "$DATA_DIR/config/opensearch.yml" <<YML
cluster.name: kd-reranker-test
node.name: node-$PORT
network.host: 127.0.0.1
http.port: $PORT
transport.port: $((PORT + 100))
discovery.type: single-node
path.data: $DATA_DIR/data
path.logs: $DATA_DIR/logs
action.auto_create_index: false
YML
  sed -i -e "s/^-Xms.*/-Xms$HEAP/" -e "s/^-Xmx.*/-Xmx$HEAP/" "$DATA_DIR/config/jvm.options"
  if [ "$(id -u)" = 0 ]; then
    id "$RUN_USER" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$RUN_USER"
    chown -R "$RUN_USER" "$DATA_DIR" "$HOME_DIR/logs" 2>/dev/null || chown -R "$RUN_USER" "$DATA_DIR"
    # the install itself stays root-owned and read-only for the server
    chmod -R a+rX "$HOME_DIR" "$BASE"
  fi
}

status() { curl -fsS "$URL/_cluster/health" >/dev/null 2>&1; }

start() {
  if status; then log "already answering at $URL"; return; fi
  install
  local jh; jh=$(java_home)
  local cmd="OPENSEARCH_JAVA_HOME='$jh' OPENSEARCH_PATH_CONF='$DATA_DIR/config' '$HOME_DIR/bin/opensearch' -d -p '$PID_FILE'"
  rm -f "$PID_FILE"
  if [ "$(id -u)" = 0 ]; then
    touch "$PID_FILE" && chown "$RUN_USER" "$PID_FILE" && chmod 755 "$BASE"
    su -s /bin/bash "$RUN_USER" -c "$cmd" >"$DATA_DIR/logs/stdout.log" 2>&1
  else
    bash -c "$cmd" >"$DATA_DIR/logs/stdout.log" 2>&1
  fi
  log "started OpenSearch $VERSION, waiting for $URL"
  for _ in $(seq 1 180); do
    if curl -fsS "$URL/_cluster/health?wait_for_status=yellow&timeout=1s" >/dev/null 2>&1; then
      log "ready at $URL (pid $(cat "$PID_FILE" 2>/dev/null))"
      return
    fi
    sleep 1
  done
  log "OpenSearch did not become healthy in 180 s; last log lines:"
  tail -n 30 "$DATA_DIR/logs/"*.log >&2 || true
  exit 1
}

stop() {
  if [ -s "$PID_FILE" ]; then
    local pid; pid=$(cat "$PID_FILE")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$PID_FILE"
    log "stopped"
  fi
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  url) echo "$URL" ;;
  *) echo "usage: $0 fetch|start|stop|status|url" >&2; exit 2 ;;
esac

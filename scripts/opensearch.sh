#!/usr/bin/env bash
# A real single-node OpenSearch for tests, benchmarks and local use.
#
#   scripts/opensearch.sh fetch    # download the distribution and plugins once (Maven Central, cached in ~/.m2)
#   scripts/opensearch.sh start    # install if needed, start on 127.0.0.1:$OPENSEARCH_PORT, wait for health
#   scripts/opensearch.sh status   # exit 0 when it answers
#   scripts/opensearch.sh stop
#
# The distribution is org.opensearch.distribution.integ-test-zip:opensearch (no bundled JDK, no
# security plugin); it runs on the machine's Java 17. OpenSearch refuses to run as root, so as
# root it runs as the dedicated user $OPENSEARCH_USER (created if missing).
#
# Plugins (OPENSEARCH_PLUGINS=ml, the default; =none for the bare node): job-scheduler, ml-commons,
# k-NN and neural-search 2.19.1.0 from Maven Central, so that the node can rerank inside its own
# search pipeline (neural-search's rerank processor calling a remote model through ml-commons).
# k-NN extends lang-painless, which the minimal distribution lacks and Maven Central has only as
# jars: they are assembled into modules/lang-painless/ with a plugin descriptor. The installed
# distribution is cached outside the checkout ($OPENSEARCH_CACHE), so a fresh clone reuses it.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=${OPENSEARCH_VERSION:-2.19.1}
PORT=${OPENSEARCH_PORT:-9200}
HEAP=${OPENSEARCH_HEAP:-512m}
RUN_USER=${OPENSEARCH_USER:-kdreranker-os}
BASE=${OPENSEARCH_DIR:-$PWD/.opensearch}
PLUGINS=${OPENSEARCH_PLUGINS:-ml}
if [ "$(id -u)" = 0 ]; then CACHE=${OPENSEARCH_CACHE:-/var/cache/kd-reranker}; else CACHE=${OPENSEARCH_CACHE:-$HOME/.cache/kd-reranker}; fi
case $PLUGINS in
  ml) HOME_DIR="$CACHE/opensearch-$VERSION-ml" ;;
  none) HOME_DIR="$BASE/opensearch-$VERSION" ;;
  *) echo "opensearch.sh: OPENSEARCH_PLUGINS must be ml or none, not $PLUGINS" >&2; exit 2 ;;
esac
M2="$HOME/.m2/repository"
PLUGIN_VERSION="$VERSION.0"
# group:artifact:version:type of every plugin zip (install order) and of the lang-painless jars
PLUGIN_ZIPS=(
  "org.opensearch.plugin:opensearch-job-scheduler:$PLUGIN_VERSION:zip"
  "org.opensearch.plugin:opensearch-ml-plugin:$PLUGIN_VERSION:zip"
  "org.opensearch.plugin:opensearch-knn:$PLUGIN_VERSION:zip"
  "org.opensearch.plugin:neural-search:$PLUGIN_VERSION:zip"
)
PAINLESS_JARS=(
  "org.opensearch.plugin:lang-painless:$VERSION:jar"
  "org.opensearch.plugin:opensearch-scripting-painless-spi:$VERSION:jar"
  "org.antlr:antlr4-runtime:4.13.1:jar"
  "org.ow2.asm:asm:9.7:jar"
  "org.ow2.asm:asm-util:9.7:jar"
  "org.ow2.asm:asm-tree:9.7:jar"
  "org.ow2.asm:asm-commons:9.7:jar"
  "org.ow2.asm:asm-analysis:9.7:jar"
)
# analysis-common (Snowball stemming for the index's analyzer; every full distribution has it)
ANALYSIS_JAR="org.opensearch.plugin:analysis-common:$VERSION:jar"
DATA_DIR="$BASE/data-$PORT"
PID_FILE="$BASE/opensearch-$PORT.pid"
ZIP="$HOME/.m2/repository/org/opensearch/distribution/integ-test-zip/opensearch/$VERSION/opensearch-$VERSION.zip"
URL="http://127.0.0.1:$PORT"

log() { echo "opensearch.sh: $*" >&2; }

# the local Maven path of group:artifact:version:type
m2_path() {
  local g a v t; IFS=: read -r g a v t <<<"$1"
  echo "$M2/${g//.//}/$a/$v/$a-$v.$t"
}

get() {  # fetch one artifact into ~/.m2 unless it is there
  local f; f=$(m2_path "$1")
  [ -f "$f" ] && return
  command -v mvn >/dev/null || { log "mvn is needed to fetch $1 from Maven Central"; exit 1; }
  log "fetching $1"
  mvn -q dependency:get -Dartifact="$1" -Dtransitive=false
  [ -f "$f" ] || { log "download finished but $f is missing"; exit 1; }
}

fetch() {
  get "org.opensearch.distribution.integ-test-zip:opensearch:$VERSION:zip"
  get "$ANALYSIS_JAR"
  if [ "$PLUGINS" = ml ]; then
    local a
    for a in "${PLUGIN_ZIPS[@]}" "${PAINLESS_JARS[@]}"; do get "$a"; done
  fi
}

# lang-painless as a module of the distribution: its jars and a descriptor (k-NN extends it)
painless_module() {
  local dir=$1/modules/lang-painless a
  mkdir -p "$dir"
  for a in "${PAINLESS_JARS[@]}"; do cp "$(m2_path "$a")" "$dir/"; done
  cat > "$dir/plugin-descriptor.properties" <<PROPS
description=An easy, safe and fast scripting language for OpenSearch
version=$VERSION
name=lang-painless
classname=org.opensearch.painless.PainlessPlugin
java.version=11
opensearch.version=$VERSION
extended.plugins=
has.native.controller=false
PROPS
  cat > "$dir/plugin-security.policy" <<'POLICY'
grant {
  // needed to generate runtime classes
  permission java.lang.RuntimePermission "createClassLoader";
  // needed to find the classloader to load whitelisted classes from
  permission java.lang.RuntimePermission "getClassLoader";
};
POLICY
}

# analysis-common as a module of the distribution (the minimal one lacks it; Maven Central has
# it as a jar): the Snowball token filter of kd-reranker's index analyzer lives there
analysis_module() {
  local dir=$1/modules/analysis-common
  mkdir -p "$dir"
  cp "$(m2_path "$ANALYSIS_JAR")" "$dir/"
  local extends=
  [ -d "$1/modules/lang-painless" ] && extends=lang-painless
  cat > "$dir/plugin-descriptor.properties" <<PROPS
description=Adds "built in" analyzers to OpenSearch.
version=$VERSION
name=analysis-common
classname=org.opensearch.analysis.common.CommonAnalysisPlugin
java.version=11
opensearch.version=$VERSION
extended.plugins=$extends
has.native.controller=false
PROPS
  chmod -R a+rX "$dir"
}

java_home() {
  if [ -n "${OPENSEARCH_JAVA_HOME:-}" ]; then echo "$OPENSEARCH_JAVA_HOME"; return; fi
  local java
  java=$(command -v java) || { log "java (17+) is needed"; exit 1; }
  dirname "$(dirname "$(readlink -f "$java")")"
}

# The oversample / truncate_hits search processors (search-pipeline-common, which the minimal
# distribution lacks): a small stand-in compiled here against the distribution's own jars.
window_plugin() {
  local home=$1 build
  command -v javac >/dev/null || { log "javac (JDK 17) is needed to build the test node's window plugin"; exit 1; }
  build=$(mktemp -d)
  log "building the oversample/truncate_hits stand-in (scripts/opensearch-window)"
  javac -nowarn --release 11 -cp "$home/lib/*" -d "$build/classes" scripts/opensearch-window/src/kdreranker/window/*.java
  mkdir -p "$build/zip"
  (cd "$build/classes" && jar cf "$build/zip/kd-search-window.jar" .)
  cat > "$build/zip/plugin-descriptor.properties" <<PROPS
description=oversample and truncate_hits search processors (test-node stand-in, kd-reranker)
version=$VERSION
name=kd-search-window
classname=kdreranker.window.WindowPlugin
java.version=11
opensearch.version=$VERSION
extended.plugins=
has.native.controller=false
PROPS
  jar cfM "$build/kd-search-window.zip" -C "$build/zip" .
  OPENSEARCH_JAVA_HOME=$(java_home) "$home/bin/opensearch-plugin" install --batch "file://$build/kd-search-window.zip" >/dev/null 2>&1 \
    || { log "installing the window plugin failed"; rm -rf "$build"; exit 1; }
  chmod -R a+rX "$home/plugins/kd-search-window"
  rm -rf "$build"
}

install() {
  fetch
  if [ ! -x "$HOME_DIR/bin/opensearch" ]; then
    log "installing into $HOME_DIR"
    mkdir -p "$BASE" "$(dirname "$HOME_DIR")"
    rm -rf "$HOME_DIR.tmp" && mkdir "$HOME_DIR.tmp"
    (cd "$HOME_DIR.tmp" && unzip -q "$ZIP")
    if [ "$PLUGINS" = ml ]; then
      local home="$HOME_DIR.tmp/opensearch-$VERSION" a
      painless_module "$home"
      for a in "${PLUGIN_ZIPS[@]}"; do
        log "installing plugin ${a#*:}"
        OPENSEARCH_JAVA_HOME=$(java_home) "$home/bin/opensearch-plugin" install --batch "file://$(m2_path "$a")" \
          >"$home.plugin.log" 2>&1 || { cat "$home.plugin.log" >&2; log "installing ${a#*:} failed"; exit 1; }
        rm -f "$home.plugin.log"
      done
    fi
    mv "$HOME_DIR.tmp/opensearch-$VERSION" "$HOME_DIR" && rmdir "$HOME_DIR.tmp"
  fi
  if [ ! -d "$HOME_DIR/modules/analysis-common" ]; then
    log "adding the analysis-common module"
    analysis_module "$HOME_DIR"
  fi
  if [ "$PLUGINS" = ml ] && [ ! -d "$HOME_DIR/plugins/kd-search-window" ]; then
    window_plugin "$HOME_DIR"
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
  if [ "$PLUGINS" = ml ]; then  # ml-commons keeps its system indices; let it create them
    sed -i 's/^action.auto_create_index: false$/action.auto_create_index: "+.plugins-ml*,+.opendistro-*,+.ql-*,-*"/' "$DATA_DIR/config/opensearch.yml"
  fi
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

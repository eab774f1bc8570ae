#!/bin/sh
# Puts an image folder (<name>/<split>/<class>/<image>) into the pipeline-data volume, whole or not
# at all. Two modes:
#   wait          the Job's command: waits until a folder has been received, prints what was
#                 loaded and exits 0 (exit 1 after LOAD_DATA_TIMEOUT_SECONDS without one)
#   receive NAME  run with `kubectl exec -i`, a tar stream holding NAME/ on stdin: unpacks it into
#                 a hidden staging folder on the volume, checks there is at least one
#                 <split>/<class>/<file>, then moves it to $DATA_DIR/NAME (replacing an older copy)
# Run it while no pipeline run is active: the old copy is moved aside just before the new one
# takes its place.
set -eu
DATA_DIR="${DATA_DIR:-/data}"
DONE="$DATA_DIR/.load-data-done"

fail() {
    echo "load-data: $*" >&2
    exit 1
}

case "${1:-wait}" in
wait)
    timeout="${LOAD_DATA_TIMEOUT_SECONDS:-3600}"
    waited=0
    rm -f "$DONE"
    echo "load-data: waiting up to ${timeout}s for a folder: tar -C PARENT -cf - NAME |" \
        "kubectl -n transfer-pipeline exec -i job/load-data -- sh $0 receive NAME"
    while [ ! -e "$DONE" ]; do
        [ "$waited" -lt "$timeout" ] || fail "nothing received in ${timeout}s"
        sleep 1
        waited=$((waited + 1))
    done
    cat "$DONE"
    rm -f "$DONE"
    ;;
receive)
    name="${2:-}"
    case "$name" in
    "" | */* | .*) fail "receive NAME: a plain folder name, got '$name'" ;;
    esac
    stage="$DATA_DIR/.incoming-$name.$$"
    old="$DATA_DIR/.replaced-$name.$$"
    trap 'rm -rf "$stage"' EXIT
    mkdir -p "$stage"
    tar -xf - -C "$stage" --no-same-owner --no-same-permissions ||
        fail "stdin is not a tar stream (tar -C PARENT -cf - $name)"
    [ -d "$stage/$name" ] || fail "the tar stream has no folder $name/"
    count=$(find "$stage/$name" -mindepth 3 -maxdepth 3 -type f | wc -l)
    [ "$count" -gt 0 ] || fail "no <split>/<class>/<image> files under $name/"
    if [ -e "$DATA_DIR/$name" ]; then mv "$DATA_DIR/$name" "$old"; fi
    mv "$stage/$name" "$DATA_DIR/$name"
    rm -rf "$old"
    echo "load-data: $count files in $DATA_DIR/$name" >"$DONE.tmp"
    mv "$DONE.tmp" "$DONE"
    cat "$DONE"
    ;;
*)
    fail "usage: $0 [wait | receive NAME]"
    ;;
esac

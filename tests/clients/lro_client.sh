#!/usr/bin/env bash
# A client of the seed LRO (Azure Maps Creator tilesets) as a curl loop in a shell script, written as a
# user outside this project would: POST /tilesets -> 202 + Location; poll honouring retry-after-ms /
# x-ms-retry-after-ms / Retry-After (seconds); retry 429/5xx and resets; stop at Succeeded/Failed; GET the
# resourceLocation. --naive ignores every delay.
# Usage: lro_client.sh BASE_URL DATASET_ID [--naive]; prints one line: the outcome.
# Extra curl options (HTTPS, a forward proxy) come from CURL_OPTS, e.g. CURL_OPTS="--cacert $(replay-proxy ca)".
set -u
base=$1 dataset=$2 naive=${3:-}
tmp=$(mktemp -d) && trap 'rm -rf "$tmp"' EXIT
requests=0 last_delay=0.05

wait_for() { [ "$naive" = --naive ] || sleep "$1"; }

header() {  # header NAME: its value in the last answer ("" when absent)
  tr -d '\r' < "$tmp/h" | awk -v n="$(printf %s "$1" | tr A-Z a-z)" 'i = index($0, ":") { if (tolower(substr($0, 1, i - 1)) == n) { v = substr($0, i + 1); sub(/^[ \t]+/, "", v); print v; exit } }'
}

delay_of() {  # the delay the last answer asked for, in seconds ("" when none)
  local v
  for name in retry-after-ms x-ms-retry-after-ms; do
    v=$(header "$name")
    if [[ $v =~ ^[0-9]+$ ]]; then awk -v ms="$v" 'BEGIN { printf "%.3f\n", ms / 1000 }'; return; fi
  done
  v=$(header retry-after)
  [[ $v =~ ^[0-9]+$ ]] && echo "$v"
}

send() {  # send METHOD URL: sets $code and $delay, body in $tmp/b; retries resets, 429 and 5xx
  local attempt
  for attempt in 1 2 3 4 5; do
    requests=$((requests + 1))
    [ "$requests" -le 50 ] || { echo "gave up after 50 requests" >&2; exit 1; }
    # shellcheck disable=SC2086
    if ! code=$(curl -s ${CURL_OPTS:-} -X "$1" -D "$tmp/h" -o "$tmp/b" -w '%{http_code}' --max-time 10 "$2"); then
      [ "$attempt" -lt 5 ] || { echo "$1 $2: connection failed" >&2; exit 1; }
      wait_for "$last_delay"; continue
    fi
    delay=$(delay_of)
    [ -z "$delay" ] || last_delay=$delay
    if [ "$code" = 429 ] || [ "$code" -ge 500 ]; then
      [ "$attempt" -lt 5 ] && { wait_for "${delay:-1}"; continue; }
    fi
    return
  done
}

field() {  # field NAME: the first string value of "NAME" in the last body
  tr -d '\n' < "$tmp/b" | grep -o "\"$1\" *: *\"[^\"]*\"" | head -n 1 | sed 's/.*: *"\(.*\)"/\1/'
}

send POST "$base/tilesets?api-version=2.0&datasetId=$dataset"
[ "$code" = 202 ] || { echo "start: HTTP $code: $(cat "$tmp/b")" >&2; exit 1; }
location=$(header location)
wait_for "${delay:-0}"
while :; do
  send GET "$location"
  [ "$code" -lt 400 ] || { echo "poll: HTTP $code: $(cat "$tmp/b")" >&2; exit 1; }
  status=$(field status)
  case $status in
    Failed) echo "Failed $(field code) ($requests requests)"; exit 0 ;;
    Succeeded)
      resource=$(field resourceLocation) id=-
      if [ -n "$resource" ]; then send GET "$resource"; id=$(field tilesetId); fi
      echo "Succeeded $id ($requests requests)"; exit 0 ;;
  esac
  wait_for "${delay:-1}"
done

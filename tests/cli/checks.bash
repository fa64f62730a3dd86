# Sourced by the tests/cli/*.sh scripts: a scratch folder removed on exit ($tmp), and the check helpers.
#   source "$(dirname "$0")/checks.bash" NAME      (the scratch folder is /tmp/clipNAMEXXXXXX)
tmp=$(mktemp -d "/tmp/clip${1:-test}XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fails=0
check() {  # check DESCRIPTION COMMAND...: report and count a failure
  local what=$1; shift
  if "$@"; then echo "ok: $what"; else echo "FAIL: $what" >&2; fails=$((fails + 1)); fi
}
has() { grep -qF -- "$2" "$1"; }  # has FILE TEXT

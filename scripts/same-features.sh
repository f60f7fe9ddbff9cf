#!/usr/bin/env bash
# Checks that building the examples and benches (which add the
# dev-dependencies) turns on no feature of a crate the `flumen` binary
# also uses. A feature that differs makes cargo compile that crate, and
# everything above it, a second time: `cargo build --release --example X`
# after `cargo build --release` would rebuild arrow and DataFusion.
#
#   scripts/same-features.sh
set -euo pipefail
cd "$(dirname "$0")/.."

features() {
  cargo tree --quiet --package flumen --edges "$1" --format '{p} {f}' --prefix none \
    | sed 's/ (\*)$//; s/ (proc-macro)//' | sort -u
}
binary=$(features normal,build)
with_dev=$(features normal,build,dev)
# Lines of crates the binary uses whose feature list differs.
differing=$(comm -13 <(echo "$binary") <(echo "$with_dev") \
  | while read -r name version rest; do
      if grep -q "^$name $version " <<<"$binary"; then
        echo "  $name $version: binary [$(grep "^$name $version " <<<"$binary" | cut -d' ' -f3-)], examples [$rest]"
      fi
    done)
if [ -n "$differing" ]; then
  echo "the examples and benches build these crates with other features than the binary:" >&2
  echo "$differing" >&2
  echo "turn the same features on for the binary's dependencies (see [dependencies] in Cargo.toml)" >&2
  exit 1
fi
echo "the binary, examples and benches share one build of every dependency"

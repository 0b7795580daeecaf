#!/usr/bin/env bash
# Builds ztunnel (Istio ambient's data plane), the `ztunnel` peer of e2e/bench/proxy.sh, from a
# git snapshot of istio/ztunnel. Not a test, not in CI; ztunnel's source never enters this repo.
#
#   e2e/bench/ztunnel-build.sh /path/to/istio-ztunnel.git [commit]
#
# GIT may be a bare repository or a checkout; COMMIT defaults to HEAD (tested with 62d82653,
# 2026-08-20). The binary lands at $ZTUNNEL_BIN (default ~/.cache/bench-peers/ztunnel), where
# proxy.sh looks for it. Takes ~8 min of CPU on 2 cores (release profile: fat LTO, one codegen unit).
#
# Three changes from a plain `cargo build`, none of which touch the data path:
# - vendor/boringssl* is left out of the export: snapshots may lack its blobs, and the ring
#   provider below does not use it;
# - the optional git dependency boring-rustls-provider and its feature are dropped from
#   Cargo.toml: cargo resolves git dependencies even for features that are off, and a machine
#   without GitHub access cannot;
# - features tls-ring,jemalloc,testing: rustls with ring (what Isthmus uses), ztunnel's default
#   allocator, and `testing` for the built-in fake CA (FAKE_CA=true), which the benchmark uses in
#   place of istiod.
set -euo pipefail
GIT=${1:?usage: ztunnel-build.sh GIT_DIR [COMMIT]}
COMMIT=${2:-HEAD}
for tool in git cargo protoc; do
  command -v "$tool" >/dev/null || { echo "missing $tool (protoc: apt-get install -y protobuf-compiler)" >&2; exit 1; }
done
if [ -d "$GIT/.git" ]; then GIT="$GIT/.git"; fi
DEST=${ZTUNNEL_BIN:-$HOME/.cache/bench-peers/ztunnel}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/bench-peers/zt-target}
SRC=$(mktemp -d /tmp/ztunnel-src.XXXX)
trap 'rm -rf "$SRC"' EXIT

rev=$(git --git-dir="$GIT" rev-parse "$COMMIT^{commit}")
echo "ztunnel $rev -> $SRC" >&2
# An exclude pathspec is not enough: git archive still reads the excluded blobs.
mapfile -d '' files < <(git --git-dir="$GIT" ls-tree -r -z --name-only "$rev" | grep -zv '^vendor/boringssl')
git --git-dir="$GIT" archive "$rev" -- "${files[@]}" | tar -x -C "$SRC"
sed -i -e '/^boring-rustls-provider = /d' -e '/^tls-boring = /d' "$SRC/Cargo.toml"

(cd "$SRC" && nice -n 19 cargo build --release -j2 --no-default-features \
  --features tls-ring,jemalloc,testing --bin ztunnel)
mkdir -p "$(dirname "$DEST")"
cp "$CARGO_TARGET_DIR/release/ztunnel" "$DEST.tmp"
mv "$DEST.tmp" "$DEST"
echo "$rev" > "$DEST.commit"
"$DEST" version >&2
echo "installed $DEST" >&2

#!/usr/bin/env bash
# Builds the Qdrant server that the Qdrant server backend's tests run against,
# once per machine, and caches the binary beside the build output
# (~/.cache/ragway/qdrant/qdrant-v1.16.3, where scripts/qdrant-server.sh finds it).
#
# The sources: qdrant/qdrant at tag v1.16.3 and its four git dependencies
# (stusmall/murmur3 rev 2c39087, qdrant/rust-stemmers tag v1.2.1, qdrant/tar-rs
# main at 856dbd0, qdrant/wal rev b03a156), each a directory under
# $RAGWAY_QDRANT_SRC (~/.cache/ragway/qdrant-src): qdrant, murmur3,
# rust-stemmers, tar-rs, wal. Missing ones are cloned from GitHub when it can be
# reached; on a machine that cannot reach it, place them there first. Cargo's
# [patch] cannot replace git dependencies offline, so the four dependency lines
# are rewritten to path dependencies on those copies.
#
# Needs Rust >= 1.89, clang, lld, cmake and protoc (Debian's packages are
# installed when missing). About 27 minutes of two cores with `--profile perf`.
set -euo pipefail

release=v1.16.3
cache=${RAGWAY_QDRANT_DIR:-$HOME/.cache/ragway/qdrant}
src=${RAGWAY_QDRANT_SRC:-$HOME/.cache/ragway/qdrant-src}
target=${RAGWAY_QDRANT_TARGET:-$HOME/.cache/ragway/qdrant-target}
bin=$cache/qdrant-$release

if [ -x "$bin" ]; then
    echo "qdrant-build: $bin is built"
    exit 0
fi

# name, repository, revision
sources=(
    "qdrant https://github.com/qdrant/qdrant $release"
    "murmur3 https://github.com/stusmall/murmur3 2c39087"
    "rust-stemmers https://github.com/qdrant/rust-stemmers v1.2.1"
    "tar-rs https://github.com/qdrant/tar-rs 856dbd0"
    "wal https://github.com/qdrant/wal b03a156"
)
mkdir -p "$src"
for entry in "${sources[@]}"; do
    read -r name repository revision <<<"$entry"
    [ -f "$src/$name/Cargo.toml" ] && continue
    echo "qdrant-build: cloning $repository at $revision" >&2
    if ! git clone -q "$repository" "$src/$name.tmp" || ! git -C "$src/$name.tmp" checkout -q "$revision"; then
        rm -rf "$src/$name.tmp"
        echo "qdrant-build: cannot fetch $repository: place it at $src/$name (revision $revision)" >&2
        exit 1
    fi
    mv "$src/$name.tmp" "$src/$name"
done

# The git dependencies as path dependencies on the copies.
sed -i \
    -e "s|^murmur3 = { git = .*|murmur3 = { path = \"$src/murmur3\" }|" \
    -e "s|^wal = { git = .*|wal = { path = \"$src/wal\" }|" \
    -e "s|^tar = { git = .*|tar = { path = \"$src/tar-rs\" }|" \
    "$src/qdrant/Cargo.toml"
sed -i -e "s|^rust-stemmers = { git = .*|rust-stemmers = { path = \"$src/rust-stemmers\" }|" \
    "$src/qdrant/lib/segment/Cargo.toml"
if grep -rn --include=Cargo.toml 'git = "https://github.com/' "$src/qdrant" >/dev/null; then
    echo "qdrant-build: a git dependency is left in $src/qdrant:" >&2
    grep -rn --include=Cargo.toml 'git = "https://github.com/' "$src/qdrant" >&2
    exit 1
fi

need() { # command package
    command -v "$1" >/dev/null 2>&1 && return
    apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq "$2" >/dev/null
}
need clang clang
need ld.lld lld
need cmake cmake
need protoc protobuf-compiler

started=$(date +%s)
nice cargo build --profile perf --bin qdrant \
    --manifest-path "$src/qdrant/Cargo.toml" --target-dir "$target"
mkdir -p "$cache"
cp "$target/perf/qdrant" "$bin.tmp"
mv "$bin.tmp" "$bin"
echo "qdrant-build: built $bin in $(( $(date +%s) - started )) s" >&2

#!/usr/bin/env bash
# Build the firmware at opt-level "z" and "s" (separate target dirs, so both
# builds stay) and print arm-none-eabi-size (text/data/bss) for each.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

TARGET=thumbv7em-none-eabihf
BIN=mdm-sync-cortex-m

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! rustup target list --installed | grep -qx "$TARGET"; then
    rustup target add "$TARGET"
fi
if ! command -v arm-none-eabi-size >/dev/null; then
    as_root apt-get update
    as_root apt-get install -y binutils-arm-none-eabi
fi
if [ -n "${RUSTFLAGS:-}${CARGO_ENCODED_RUSTFLAGS:-}" ]; then
    echo "size.sh: ignoring RUSTFLAGS from the environment" >&2
    unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS
fi

for level in z s; do
    dir="target/size-opt-$level"
    CARGO_PROFILE_RELEASE_OPT_LEVEL="$level" CARGO_TARGET_DIR="$dir" \
        cargo build --release --quiet
done
for level in z s; do
    echo "== opt-level \"$level\""
    arm-none-eabi-size "target/size-opt-$level/$TARGET/release/$BIN"
done

#!/usr/bin/env bash
# Build the firmware (release) and run it under QEMU (mps2-an386, Cortex-M4).
# Passes only if QEMU exits 0 and every line of expected.txt (one substring
# per line, blank lines ignored) appears in the firmware's output.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

TARGET=thumbv7em-none-eabihf
# Where `cargo build` below puts the ELF: a CARGO_TARGET_DIR from the
# environment moves it, and running a stale one from target/ would hide a failure.
ELF=${CARGO_TARGET_DIR:-target}/$TARGET/release/mdm-sync-cortex-m
OUT=target/qemu-output.txt
# Same command as the runner in .cargo/config.toml (`cargo run --release`).
# QEMU is started directly so the output file holds only what the firmware
# and QEMU print, not cargo's messages.
QEMU=(qemu-system-arm -cpu cortex-m4 -machine mps2-an386 -nographic
      -semihosting-config enable=on,target=native -kernel)

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! rustup target list --installed | grep -qx "$TARGET"; then
    echo "run.sh: installing Rust target $TARGET"
    rustup target add "$TARGET"
fi
if ! command -v qemu-system-arm >/dev/null; then
    echo "run.sh: installing qemu-system-arm"
    as_root apt-get update
    as_root apt-get install -y qemu-system-arm binutils-arm-none-eabi
fi

# RUSTFLAGS from the environment would replace .cargo/config.toml's
# rustflags and drop the linker script (-Tlink.x).
if [ -n "${RUSTFLAGS:-}${CARGO_ENCODED_RUSTFLAGS:-}" ]; then
    echo "run.sh: ignoring RUSTFLAGS from the environment" >&2
    unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS
fi

cargo build --release

mkdir -p target
status=0
timeout 60 "${QEMU[@]}" "$ELF" </dev/null >"$OUT" 2>&1 || status=$?
echo "---- firmware output ($OUT) ----"
cat "$OUT"
echo "---- end of output ----"

fail=0
if [ "$status" -eq 124 ]; then
    echo "run.sh: FAIL: QEMU timed out after 60 s" >&2
    fail=1
elif [ "$status" -ne 0 ]; then
    echo "run.sh: FAIL: QEMU exited with status $status" >&2
    fail=1
fi
while IFS= read -r line || [ -n "$line" ]; do
    [ -z "$line" ] && continue
    if ! grep -qF -- "$line" "$OUT"; then
        echo "run.sh: FAIL: expected output missing: $line" >&2
        fail=1
    fi
done < expected.txt

if [ "$fail" -ne 0 ]; then
    exit 1
fi
echo "run.sh: PASS ($(grep -cv '^$' expected.txt) expected line(s) found)"

#!/usr/bin/env bash
# Footprint of the device engine on Cortex-M4 (thumbv7em-none-eabihf).
#
# Builds the firmware crate at opt-level "z" and "s" (separate target dirs, so
# both builds stay) and prints, for each:
#   - .text/.data/.bss (arm-none-eabi-size, Berkeley: text = vector table +
#     code + read-only data) of the demo firmware, of `footprint-base` (runtime
#     only) and of `footprint-engine` (runtime + every public call of the
#     engine, no printing);
#   - the engine's share: footprint-engine minus footprint-base, i.e. the device
#     engine with its codec (postcard), CRC and SHA-256 (Hello hash, proof), plus the
#     compiler-builtins routines it pulls in;
#   - where those bytes come from, by crate (footprint.py, needs python3).
# Then it runs `device-size` under QEMU for size_of::<Device>() and its parts.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

TARGET=thumbv7em-none-eabihf
QEMU=(qemu-system-arm -cpu cortex-m4 -machine mps2-an386 -nographic
      -semihosting-config enable=on,target=native -kernel)

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! rustup target list --installed | grep -qx "$TARGET"; then
    rustup target add "$TARGET"
fi
if ! command -v arm-none-eabi-size >/dev/null || ! command -v qemu-system-arm >/dev/null; then
    as_root apt-get update
    as_root apt-get install -y binutils-arm-none-eabi qemu-system-arm
fi
if [ -n "${RUSTFLAGS:-}${CARGO_ENCODED_RUSTFLAGS:-}" ]; then
    echo "size.sh: ignoring RUSTFLAGS from the environment" >&2
    unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS
fi

for level in z s; do
    CARGO_PROFILE_RELEASE_OPT_LEVEL="$level" CARGO_TARGET_DIR="target/size-opt-$level" \
        cargo build --release --quiet
done

# text data bss of an ELF (Berkeley format).
sizes() { arm-none-eabi-size "$1" | awk 'NR == 2 { print $1, $2, $3 }'; }

for level in z s; do
    dir="target/size-opt-$level/$TARGET/release"
    echo "== opt-level \"$level\" (LTO, codegen-units 1, panic abort, sha2 compact)"
    printf '  %-34s %7s %7s %7s\n' "" text data bss
    for bin in mdm-sync-cortex-m footprint-base footprint-engine; do
        read -r t d b < <(sizes "$dir/$bin")
        printf '  %-34s %7d %7d %7d\n' "$bin" "$t" "$d" "$b"
    done
    read -r bt bd bb < <(sizes "$dir/footprint-base")
    read -r et ed eb < <(sizes "$dir/footprint-engine")
    printf '  %-34s %7d %7d %7d\n' "engine share (engine - base)" \
        $((et - bt)) $((ed - bd)) $((eb - bb))
    echo "  engine share: flash $((et - bt + ed - bd)) bytes ($(((et - bt + ed - bd) * 10 / 1024 / 10)).$(((et - bt + ed - bd) * 10 / 1024 % 10)) KiB), static RAM $((ed - bd + eb - bb)) bytes"
    if command -v python3 >/dev/null; then
        echo "  footprint-engine by crate (bytes of code and read-only data):"
        python3 footprint.py "$dir/footprint-engine"
    fi
done

echo "== RAM of one engine value (its home is the firmware's choice: static, task, stack)"
timeout 30 "${QEMU[@]}" "target/size-opt-z/$TARGET/release/device-size" </dev/null

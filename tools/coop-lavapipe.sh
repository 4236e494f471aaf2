#!/usr/bin/env bash
# Sets up a CPU Vulkan driver that has cooperative matrices
# (VK_KHR_cooperative_matrix), so the tensor-core kernels (shaders/coop_core.wgsl)
# run and are checked on a machine without a GPU.
#
#   tools/coop-lavapipe.sh DIR                 # once; about 30 s and 70 MB of downloads
#   DIR/run target/release/pnp info            # any program, on that driver only
#   CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=DIR/run cargo test --release
#   COOPMAT_VALIDATE=1 DIR/run ...             # with the Khronos validation layer,
#                                              # which stops the program at the first error
#
# Why this shape: Debian bookworm's lavapipe (Mesa 22.3) has no cooperative
# matrices; the lavapipe of Mesa 26 (trixie-backports) lists 8x8x8 f16 -> f16 and
# f16 -> f32 with subgroups of 8. It needs a newer glibc than bookworm's, so the
# script unpacks it together with trixie's own glibc and Vulkan loader into DIR
# (no system package changes) and writes DIR/run, which starts a program under
# trixie's dynamic loader with only that driver visible. Programs built on
# bookworm run unchanged that way. The Debian mirror is the one this machine's
# apt already uses. DIR is reused when it is already set up.
set -euo pipefail
dir=$(realpath -m "${1:?usage: tools/coop-lavapipe.sh DIR}")
if [ -x "$dir/run" ] && [ -f "$dir/lvp_icd.json" ]; then
    echo "cooperative-matrix lavapipe already in $dir"
    exit 0
fi
apt_dir=$dir/apt
root=$dir/root
lib=$root/usr/lib/x86_64-linux-gnu

mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | grep -o -E 'https?://[^ ]*/debian( |$)' | grep -o -E 'https?://[^ ]*/debian' | head -1 || true)
if [ -z "$mirror" ]; then
    echo "coop-lavapipe: no Debian mirror in this machine's apt sources" >&2
    exit 1
fi

mkdir -p "$apt_dir"/lists/partial "$apt_dir"/cache/archives/partial "$apt_dir"/debs "$root" \
    "$apt_dir"/etc/apt.conf.d "$apt_dir"/etc/sources.list.d "$apt_dir"/etc/preferences.d
: > "$apt_dir/status" # an empty package database: the whole closure is fetched, libc included
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
printf 'deb [signed-by=%s] %s trixie main\ndeb [signed-by=%s] %s trixie-backports main\n' \
    "$keyring" "$mirror" "$keyring" "$mirror" > "$apt_dir/etc/sources.list"
cat > "$apt_dir/apt.conf" <<EOF
Dir::Etc "$apt_dir/etc";
Dir::Etc::sourcelist "$apt_dir/etc/sources.list";
Dir::Etc::sourceparts "$apt_dir/etc/sources.list.d";
Dir::Etc::preferencesparts "$apt_dir/etc/preferences.d";
Dir::Etc::parts "$apt_dir/etc/apt.conf.d";
Dir::State "$apt_dir";
Dir::State::lists "$apt_dir/lists";
Dir::State::status "$apt_dir/status";
Dir::Cache "$apt_dir/cache";
APT::Architecture "amd64";
Acquire::Languages "none";
Debug::NoLocking "1";
EOF
export APT_CONFIG=$apt_dir/apt.conf
apt-get -qq update
apt-get -s install --no-install-recommends \
    mesa-vulkan-drivers/trixie-backports vulkan-validationlayers/trixie \
    | awk '/^Inst /{ print $2 "=" substr($3, 2) }' > "$apt_dir/packages.txt"
(cd "$apt_dir/debs" && apt-get -qq download $(cat "$apt_dir/packages.txt"))
for deb in "$apt_dir"/debs/*.deb; do
    dpkg -x "$deb" "$root"
done

cat > "$dir/lvp_icd.json" <<EOF
{ "file_format_version": "1.0.1", "ICD": { "api_version": "1.4.0", "library_path": "$lib/libvulkan_lvp.so" } }
EOF
cat > "$dir/run" <<EOF
#!/bin/sh
# Runs a program under trixie's dynamic loader with Mesa 26's lavapipe as the
# only Vulkan driver (written by tools/coop-lavapipe.sh).
export VK_ICD_FILENAMES=$dir/lvp_icd.json VK_DRIVER_FILES=$dir/lvp_icd.json
export VK_LOADER_LAYERS_DISABLE='~implicit~' VK_LAYER_PATH=$root/usr/share/vulkan/explicit_layer.d
if [ -n "\${COOPMAT_VALIDATE:-}" ]; then
    export VK_INSTANCE_LAYERS=VK_LAYER_KHRONOS_validation VK_LAYER_DEBUG_ACTION=VK_DBG_LAYER_ACTION_BREAK
fi
export XDG_RUNTIME_DIR=\${XDG_RUNTIME_DIR:-\$(mktemp -d)}
exec $lib/ld-linux-x86-64.so.2 --library-path $lib "\$@"
EOF
chmod +x "$dir/run"
echo "cooperative-matrix lavapipe: $(grep '^mesa-vulkan-drivers=' "$apt_dir/packages.txt") in $dir"

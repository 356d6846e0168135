#!/usr/bin/env bash
# vvold against the Linux kernel's iSCSI initiator, a peer none of us wrote, without touching
# the host's kernel: boots Debian's kernel in a throw-away QEMU VM whose only disk is an
# initramfs built here, and lets the guest log in to a vvold on the host's 127.0.0.1 (QEMU's
# user-mode network shows the host's loopback to the guest as 10.0.2.2).
#
# In the guest (scripts/lib/kernel-initiator-guest.sh is its /init): open-iscsi's iscsistart
# logs in with CHAP and CRC32C header and data digests and hands the connection to iscsi_tcp;
# the kernel's SCSI disk driver probes the LUNs; fio writes and verifies data through the block
# layer (4 KiB at QD 16, then 512 B to 1 MiB); blkdiscard sends UNMAP and the range must read
# back as zeros; an ext4 file system is made, written, remounted and read back; the Protocol
# Endpoint (LUN 254) is scanned as a small disk of zeros; and scripts/fio/blockdev.fio runs on
# the null LUN with each job shortened. Each check prints PASS or FAIL, and any I/O error the
# guest kernel logs is a FAIL too; the script exits 1 unless all pass.
#
#   scripts/kernel-initiator.sh          about a minute once the packages are in place
#
# Settings (environment):
#   RUNTIME=N     seconds per blockdev.fio job (default 2)
#   KVM=1         use KVM (default: QEMU's own emulation, TCG, which works inside a VM without
#                 nested virtualization; its IOPS say nothing about vvold's speed)
#   KEEP=1        keep the work directory (config, logs, initramfs)
#
# It installs what is missing from Debian's packages (qemu-system-x86, busybox-static,
# open-iscsi, fio, e2fsprogs, kmod, cpio) and downloads, without installing, the kernel that
# Debian's linux-image-amd64 names, cached in target/kernel-initiator/. The daemon it starts is
# stopped by its PID, and so is QEMU.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=scripts/lib/procs.sh
source scripts/lib/procs.sh

need_apt=()
command -v qemu-system-x86_64 >/dev/null || need_apt+=(qemu-system-x86)
dpkg -s busybox-static >/dev/null 2>&1 || need_apt+=(busybox-static)
command -v iscsistart >/dev/null || need_apt+=(open-iscsi)
command -v fio >/dev/null || need_apt+=(fio)
command -v mke2fs >/dev/null || need_apt+=(e2fsprogs)
command -v depmod >/dev/null || [ -x /sbin/depmod ] || need_apt+=(kmod)
command -v cpio >/dev/null || need_apt+=(cpio)
command -v python3 >/dev/null || need_apt+=(python3)
apt_install "${need_apt[@]}"
DEPMOD=$(command -v depmod || echo /sbin/depmod)

RUNTIME=${RUNTIME:-2}
IQN=iqn.2026-11.io.vvold:kernel
INITIATOR=iqn.2026-11.io.vvold:kernel-guest
CHAP_USER=kernel
CHAP_SECRET=kernel-secret-1
RAM_BYTES=$((256 << 20))

TMP=$(mktemp -d /tmp/vvold-kernel.XXXXXX)
VVOLD_PID=""
QEMU_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_pid "$QEMU_PID"
  stop_pid "$VVOLD_PID"
  wait 2>/dev/null || true
  if [ $rc -ne 0 ] || [ "${KEEP:-0}" = 1 ]; then
    echo "work directory kept: $TMP" >&2
  else
    rm -rf "$TMP"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- the kernel: Debian's current one, downloaded once ----
CACHE=$ROOT/target/kernel-initiator
mkdir -p "$CACHE"
KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$KPKG" ]; then
  $SUDO apt-get update -qq
  KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
KVER=${KPKG#linux-image-}
KROOT=$CACHE/$KVER
if [ ! -f "$KROOT/done" ]; then
  echo "== downloading $KPKG"
  rm -rf "$KROOT" && mkdir -p "$KROOT"
  rm -f "$CACHE/${KPKG}"_*.deb
  # (As root, apt warns that it downloads unsandboxed: harmless here.)
  download() { (cd "$CACHE" && apt-get download "$KPKG" >/dev/null 2>&1); }
  download || { $SUDO apt-get update -qq; download; }
  dpkg -x "$CACHE/${KPKG}"_*.deb "$KROOT"
  rm -f "$CACHE/${KPKG}"_*.deb
  "$DEPMOD" -b "$KROOT" "$KVER"
  touch "$KROOT/done"
fi

# ---- the initramfs ----
echo "== initramfs ($KVER)"
IR=$TMP/initramfs
mkdir -p "$IR"/{bin,usr/bin,etc,mods,vvt}
if ldd /bin/busybox >/dev/null 2>&1; then
  echo "/bin/busybox is not the static one (busybox-static)" >&2; exit 1
fi
cp /bin/busybox "$IR/bin/"
copy_with_libs() { # BINARY: into $IR/usr/bin, with the shared libraries ldd names, at their paths
  cp "$1" "$IR/usr/bin/"
  local lib
  for lib in $(ldd "$1" | grep -o '/[^ ]*'); do
    mkdir -p "$IR$(dirname "$lib")"
    cp -L "$lib" "$IR$lib"
  done
}
for b in iscsistart fio mke2fs; do copy_with_libs "$(command -v "$b" || echo "/sbin/$b")"; done
cp /etc/mke2fs.conf "$IR/etc/"
# The modules the guest needs and, first, what they depend on (modules.dep, depth first).
python3 - "$KROOT/lib/modules/$KVER" "$IR/mods" e1000 iscsi_tcp sd_mod crc32c_generic ext4 <<'PY'
import os, shutil, sys
base, out, wanted = sys.argv[1], sys.argv[2], sys.argv[3:]
deps = {}
for line in open(os.path.join(base, "modules.dep")):
    mod, _, rest = line.partition(":")
    deps[mod] = rest.split()
by_name = {os.path.basename(m).split(".ko")[0].replace("-", "_"): m for m in deps}
order = []
def visit(m):
    for d in deps[m]:
        visit(d)
    if m not in order:
        order.append(m)
for w in wanted:
    visit(by_name[w])
with open(os.path.join(out, "order"), "w") as f:
    for m in order:
        shutil.copy(os.path.join(base, m), out)
        f.write(os.path.basename(m) + "\n")
PY
cp scripts/fio/blockdev.fio "$IR/vvt/"
cp scripts/lib/kernel-initiator-guest.sh "$IR/init"
chmod +x "$IR/init"
(cd "$IR" && find . | cpio -o -H newc 2>/dev/null | gzip -1) > "$TMP/initramfs.gz"

# ---- vvold on the host's loopback ----
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  echo "== cargo build --release (vvold)"
  cargo build --release --bin vvold
fi
PORT=$(free_port)
CTL=$(free_port)
cat > "$TMP/vvold.toml" <<EOF
listen = ["127.0.0.1:$PORT"]
[[target]]
name = "$IQN"
chap = { user = "$CHAP_USER", secret = "$CHAP_SECRET" }
[[target.lun]]
id = 0
backend = "null"
size = "2GiB"
[[target.lun]]
id = 1
backend = "ram"
size = "$((RAM_BYTES >> 20))MiB"
[[target.pe]]
id = 254
EOF
echo "== vvold on 127.0.0.1:$PORT"
target/release/vvold --config "$TMP/vvold.toml" --data-dir "$TMP/data" \
  --control-listen "127.0.0.1:$CTL" --log-level info > "$TMP/vvold.log" 2>&1 &
VVOLD_PID=$!
wait_port "$PORT" "$VVOLD_PID" vvold "$TMP/vvold.log"

# ---- the guest ----
ACCEL=tcg; [ "${KVM:-0}" = 1 ] && ACCEL=kvm
echo "== booting Linux $KVER under QEMU ($ACCEL); console in $TMP/console.log"
: > "$TMP/results.txt"
qemu-system-x86_64 -accel "$ACCEL" -m 1024 -smp 1 -nodefaults -display none -no-reboot \
  -kernel "$KROOT/boot/vmlinuz-$KVER" -initrd "$TMP/initramfs.gz" \
  -append "console=ttyS0 panic=-1 vt.target=$IQN vt.port=$PORT vt.initiator=$INITIATOR \
vt.user=$CHAP_USER vt.secret=$CHAP_SECRET vt.ram_sectors=$((RAM_BYTES / 512)) vt.runtime=$RUNTIME" \
  -nic user,model=e1000 -serial "file:$TMP/console.log" -serial "file:$TMP/results.txt" &
QEMU_PID=$!
# Booting takes about 10 s under TCG; the checks and 8 fio jobs of RUNTIME s each follow.
deadline=$((SECONDS + 300 + 8 * RUNTIME))
while kill -0 "$QEMU_PID" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 1; done
if kill -0 "$QEMU_PID" 2>/dev/null; then
  echo "the guest did not finish in time; console:" >&2; tail -n 30 "$TMP/console.log" >&2
  exit 1
fi
wait "$QEMU_PID" || true
QEMU_PID=""

python3 - "$TMP/results.txt" <<'PY'
import json, re, sys
text = open(sys.argv[1], errors="replace").read().replace("\r", "")
checks = re.findall(r"^VVT (PASS|FAIL) (\S+) ?(.*)$", text, re.M)
for verdict, name, detail in checks:
    print(f"{verdict}  {name:13} {detail}")
expected = {"login", "disks", "verify-4k", "verify-mixed", "discard", "ext4", "pe", "blockdev.fio"}
passed = {name for verdict, name, _ in checks if verdict == "PASS"}
ok = expected <= passed and not any(v == "FAIL" for v, _, _ in checks)
if "VVT DONE" not in text:
    print("FAIL  the guest stopped before it was done")
    ok = False
m = re.search(r"VVT-JSON-BEGIN\n(.*?)VVT-JSON-END", text, re.S)
if m:
    body = m.group(1)
    jobs = json.loads(body[body.index("{"):])["jobs"]
    print("\nblockdev.fio on the null LUN (IOPS under emulation say nothing about vvold):")
    for j in jobs:
        d = j["read"] if j["read"]["io_bytes"] else j["write"]
        print(f"  {j['jobname']:20} {d['iops']:9.0f} IOPS {d['bw'] / 1024:8.1f} MiB/s "
              f"mean {d['clat_ns']['mean'] / 1000:9.1f} us  errors {j['error']}")
        ok = ok and j["error"] == 0
m = re.search(r"VVT-DMESG-BEGIN\n(.*?)VVT-DMESG-END", text, re.S)
# The power-on unit attention each LUN raises once is expected; anything else of the kind is
# shown for a person to judge.
noted = [l for l in (m.group(1) if m else "").splitlines()
         if re.search(r"sd \d|scsi|iscsi|connection", l, re.I)
         and re.search(r"error|fail|sense key|illegal|reject|timed out|abort|reset", l, re.I)
         and "Power-on or device reset occurred" not in l]
if noted:
    print("\nthe guest kernel noted:")
    for l in noted[:40]:
        print("  " + l)
io_errors = [l for l in (m.group(1) if m else "").splitlines()
             if re.search(r"I/O error|critical target error|critical medium error", l)]
if io_errors:
    print(f"FAIL  the guest kernel logged {len(io_errors)} I/O errors, first: {io_errors[0]}")
    ok = False
print("\nkernel initiator:", "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
PY

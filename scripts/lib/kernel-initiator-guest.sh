#!/bin/busybox sh
# shellcheck shell=sh
# /init of the throw-away VM that scripts/kernel-initiator.sh boots: the Linux kernel's iSCSI
# initiator (iscsi_tcp, logged in by open-iscsi's iscsistart) against a vvold on the host.
#
# The host passes the target through the kernel command line (vt.*). Every check writes one
# line "VVT PASS name detail" or "VVT FAIL name detail" to /dev/ttyS1, the second serial port,
# which the host keeps in a file; fio's JSON and the kernel log follow between markers. The
# console (ttyS0) carries only what the kernel and this script print for a person to read.
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /tmp /mnt /run /var/lock/iscsi
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
# iscsistart, fio and e2fsprogs' mke2fs come from the host's packages, in /usr/bin; mke2fs is
# called by its path, since this busybox's shell prefers its own applet of that name.
export PATH=/usr/bin:/bin
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/lib:/usr/lib/x86_64-linux-gnu
OUT=/dev/ttyS1

arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^$1=//p"; }
say() { echo "VVT $*" > "$OUT"; echo "VVT $*"; }
pass() { say "PASS $*"; }
fail() { say "FAIL $*"; }
finish() {
  echo "VVT-DMESG-BEGIN" > "$OUT"; dmesg > "$OUT"; echo "VVT-DMESG-END" > "$OUT"
  say "DONE"
  sync
  poweroff -f
}

# Modules in dependency order, as the host computed them from modules.dep.
while read -r m; do
  insmod "/mods/$m" || fail "insmod $m"
done < /mods/order

ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2

# ---- login: CHAP, header and data digests ----
if iscsistart -i "$(arg vt.initiator)" -t "$(arg vt.target)" -g 1 -a 10.0.2.2 -p "$(arg vt.port)" \
  -u "$(arg vt.user)" -w "$(arg vt.secret)" \
  -P node.conn[0].iscsi.HeaderDigest=CRC32C -P node.conn[0].iscsi.DataDigest=CRC32C; then
  pass login "CHAP and CRC32C digests"
else
  fail login "iscsistart exit $?"
  finish
fi

# ---- the LUNs as SCSI disks: LUN 0 (null) and LUN 1 (ram) ----
disk_of_lun() {
  for _ in $(seq 50); do
    for d in /sys/class/scsi_device/*:*:*:"$1"/device/block/*; do
      [ -e "$d" ] && { echo "/dev/$(basename "$d")"; return 0; }
    done
    sleep 0.2
  done
  return 1
}
if ! NULL=$(disk_of_lun 0) || ! RAM=$(disk_of_lun 1); then
  fail disks "LUN 0 or 1 has no block device"
  finish
fi
read -r vendor < "/sys/block/${RAM#/dev/}/device/vendor"
sectors=$(cat "/sys/block/${RAM#/dev/}/size")
if [ "$vendor" = VVOLD ] && [ "$sectors" = "$(arg vt.ram_sectors)" ]; then
  pass disks "LUN 0 $NULL, LUN 1 $RAM: vendor $vendor, $sectors sectors"
else
  fail disks "LUN 1 $RAM: vendor '$vendor', $sectors sectors"
fi

# ---- data integrity through the kernel's block layer ----
FIO="fio --ioengine=libaio --direct=1 --verify=crc32c --verify_fatal=1 --do_verify=1"
if $FIO --name=verify-4k --filename="$RAM" --rw=randwrite --bs=4k --size=64m --iodepth=16 \
  --output=/tmp/v1.txt; then
  pass verify-4k "64 MiB of 4 KiB random writes at QD 16 read back intact"
else
  fail verify-4k "$(tail -n 5 /tmp/v1.txt)"
fi
# Sizes from one sector to 1 MiB: several Data-Out PDUs, R2Ts past the first burst.
if $FIO --name=verify-mixed --filename="$RAM" --rw=randwrite --bsrange=512-1m --size=128m \
  --iodepth=8 --output=/tmp/v2.txt; then
  pass verify-mixed "128 MiB of 512 B to 1 MiB random writes at QD 8 read back intact"
else
  fail verify-mixed "$(tail -n 5 /tmp/v2.txt)"
fi

# ---- UNMAP: the kernel discards with it (thin LUN, LBPRZ), and unmapped blocks read zeros ----
mode=$(cat /sys/class/scsi_disk/*:*:*:1/provisioning_mode)
if [ "$mode" = unmap ] && blkdiscard -o 0 -l 16777216 "$RAM" &&
  cmp -n 16777216 "$RAM" /dev/zero; then
  pass discard "provisioning_mode $mode; 16 MiB discarded, read back as zeros"
else
  fail discard "provisioning_mode '$mode'"
fi

# ---- a file system: written, unmounted, the page cache dropped, read back ----
dd if=/dev/urandom of=/tmp/f bs=1M count=8 2>/dev/null
sum=$(md5sum < /tmp/f)
if /usr/bin/mke2fs -q -F -t ext4 "$RAM" && mount -t ext4 "$RAM" /mnt && cp /tmp/f /mnt/f && umount /mnt &&
  echo 3 > /proc/sys/vm/drop_caches && mount -t ext4 "$RAM" /mnt &&
  [ "$(md5sum < /mnt/f)" = "$sum" ] && umount /mnt; then
  pass ext4 "mkfs, 8 MiB file written, remounted and read back intact"
else
  fail ext4 "see the console"
fi

# ---- the Protocol Endpoint: a small read-only disk of zeros, scanned without errors ----
if PE=$(disk_of_lun 254) && cmp -n 4096 "$PE" /dev/zero &&
  [ "$(cat "/sys/block/${PE#/dev/}/ro")" = 1 ]; then
  pass pe "LUN 254 is $PE, read-only, reads zeros"
else
  fail pe "LUN 254: no disk, not read-only, or its reads fail"
fi

# ---- scripts/fio/blockdev.fio on the null LUN, shortened ----
sed -e "s|^filename=/dev/sdX|filename=$NULL|" -e "s|^runtime=.*|runtime=$(arg vt.runtime)|" \
  -e "s|^ramp_time=.*|ramp_time=0|" /vvt/blockdev.fio > /tmp/blockdev.fio
if fio --output-format=json --output=/tmp/blockdev.json /tmp/blockdev.fio; then
  pass blockdev.fio "every job ran; results below"
else
  fail blockdev.fio "fio exit $?"
fi
echo "VVT-JSON-BEGIN" > "$OUT"; cat /tmp/blockdev.json > "$OUT"; echo "VVT-JSON-END" > "$OUT"
finish

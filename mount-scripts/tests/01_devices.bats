#!/usr/bin/env bats
# The default tree's devices as a shell user sees them: cat, dd, head, cmp, wdmfs.
#   bats mount-scripts/tests

load helpers

setup_file() { mount_tree; }
teardown_file() { unmount_tree; }

setup() { WORK=$(mktemp -d); }
teardown() { rm -rf "$WORK"; }

@test "null reads empty and swallows writes" {
    run cat "$MP/null"
    assert_success
    assert_output ""
    run dd if=/dev/zero of="$MP/null" bs=1M count=16 status=none
    assert_success
}

@test "zero reads as many zeros as asked, in 1 MiB blocks too" {
    dd if="$MP/zero" of="$WORK/z" bs=1M count=8 status=none
    head -c 8388608 /dev/zero > "$WORK/ref"
    cmp "$WORK/z" "$WORK/ref"
    head -c 12345 "$MP/zero" > "$WORK/small"
    cmp "$WORK/small" <(head -c 12345 /dev/zero)
}

@test "ramdisk0 keeps data written with dd seek and reads it back with skip" {
    head -c 65536 /dev/urandom > "$WORK/a"
    head -c 4096 /dev/urandom > "$WORK/b"
    dd if="$WORK/a" of="$MP/ramdisk0" bs=4096 seek=100 conv=notrunc status=none
    dd if="$WORK/b" of="$MP/ramdisk0" bs=4096 seek=16383 status=none
    dd if="$MP/ramdisk0" of="$WORK/a2" bs=4096 skip=100 count=16 status=none
    dd if="$MP/ramdisk0" of="$WORK/b2" bs=4096 skip=16383 count=1 status=none
    cmp "$WORK/a" "$WORK/a2"
    cmp "$WORK/b" "$WORK/b2"
}

@test "ramdisk0 refuses a write past its end with ENOSPC" {
    run dd if=/dev/zero of="$MP/ramdisk0" bs=4096 seek=16384 count=1 conv=notrunc status=none
    assert_failure
    assert_output --partial "No space left on device"
}

@test "a read at the end of ramdisk0 is empty" {
    run dd if="$MP/ramdisk0" bs=4096 skip=16384 count=1 status=none
    assert_success
    assert_output ""
}

@test "echo gives back what was written" {
    echo "hello, device" > "$MP/echo"
    run head -c 14 "$MP/echo"
    assert_success
    assert_output "hello, device"
}

@test "wdmfs ioctl reads the disk length" {
    run "$WDMFS" ioctl "$MP/ramdisk0" IOCTL_DISK_GET_LENGTH_INFO --out-size 8
    assert_success
    assert_output "0000000400000000"
}

@test "the four ioctl methods give the same answer" {
    for code in 0x00222000 0x00222005 0x0022200A 0x0022200F; do
        run "$WDMFS" ioctl "$MP/ioctl-demo" "$code" --in 776f726c64 --out-size 5 --raw
        assert_success
        assert_output "WORLD"
    done
}

@test "an unknown ioctl reports STATUS_INVALID_DEVICE_REQUEST and exits 1" {
    run "$WDMFS" ioctl "$MP/ramdisk0" 0x00224FFC
    assert_failure 1
    assert_output --partial "STATUS_INVALID_DEVICE_REQUEST"
}

@test "an ioctl needing write access is denied on a read-only handle" {
    run "$WDMFS" ioctl "$MP/ioctl-demo" 0x0022A044 --read-only
    assert_failure 1
    assert_output --partial "STATUS_ACCESS_DENIED"
}

@test "a missing device is ENOENT" {
    run cat "$MP/no-such-device"
    assert_failure
    assert_output --partial "No such file or directory"
}

@test "nothing was copied on the way" {
    run cat "$MP/.stats"
    assert_success
    assert_line "bytes_copied 0"
    assert_line "verifier_violations 0"
}

@test "names cannot be created, removed or moved, and the devices keep working" {
    run dd if=/dev/zero of="$MP/new-device" bs=1 count=1 status=none
    assert_failure
    assert_output --partial "Operation not permitted"
    run dd if="$MP/null" of="$MP/zero/x" status=none
    assert_failure
    assert_output --partial "Not a directory"
    run head -c 4 "$MP/zero"
    assert_success
}

#!/usr/bin/env bats
# What a script can rely on whatever a driver does: no caller is left blocked,
# broken rules show up in .stats, bad requests get plain errors.

load helpers

teardown() { unmount_tree; }

@test "a broken driver's rule shows up in .stats and the device keeps serving" {
    mount_tree --tree test
    before=$(stat_of verifier_violations)
    run "$WDMFS" ioctl "$MP/misbehave" 0x00222400 --out-size 0   # completes its IRP twice
    assert_success
    [ "$(stat_of verifier_violations)" -gt "$before" ]
    run "$WDMFS" ioctl "$MP/ramdisk0" IOCTL_DISK_GET_LENGTH_INFO --out-size 8
    assert_output "0000000400000000"
}

@test "unmount --force ends a daemon whose driver never completes a request; its caller gets ENODEV" {
    mount_tree --tree test
    pended=$(stat_of irps_pended)
    "$WDMFS" ioctl "$MP/misbehave" 0x0022240C --out-size 0 2>"$BATS_TEST_TMPDIR/caller.err" &   # pends forever, no cancel routine
    caller=$!
    wait_until pended_past "$pended"        # the request pends in the driver
    wait_until blocked_in "$caller" ioctl   # and its caller sleeps in ioctl()
    run "$WDMFS" unmount "$MP"
    assert_failure 2
    assert_output --partial "--force"
    run "$WDMFS" unmount --force "$MP"
    assert_success
    run wait "$caller"
    assert_failure 2
    run cat "$BATS_TEST_TMPDIR/caller.err"
    assert_output --partial "No such device"
    run cat "$MP/null"
    assert_failure
    assert_output --partial "No such file or directory"   # unmounted: the empty directory
}

@test "chmod and touch on a device fail with EPERM" {
    mount_tree
    run chmod 600 "$MP/null"
    assert_failure
    assert_output --partial "Operation not permitted"
    run touch "$MP/zero"
    assert_failure
    assert_output --partial "Operation not permitted"
}

@test "stty on a device says it is not a terminal" {
    mount_tree
    run stty -F "$MP/zero"
    assert_failure
    assert_output --partial "Inappropriate ioctl"
}

@test "mount refuses a directory that is not empty" {
    dir=$(mktemp -d /tmp/wdmfs-bats.XXXXXX)
    touch "$dir/file"
    run "$WDMFS" mount "$dir"
    assert_failure 2
    assert_output --partial "not empty"
    rm -r "$dir"
}

@test "a toaster is plugged in, used and unplugged with cat, dd and wdmfs" {
    mount_tree
    run "$WDMFS" plug "$MP/toaster-bus" 1
    assert_success
    assert_output "toaster1"
    [ -e "$MP/toaster1" ]
    printf 'bread' | dd of="$MP/toaster1" conv=notrunc status=none
    run cat "$MP/toaster1"
    assert_output "toaster1: 1 slices toasted"
    run "$WDMFS" unplug "$MP/toaster-bus" 1
    assert_success
    wait_until test ! -e "$MP/toaster1"
    run "$WDMFS" unplug "$MP/toaster-bus" 1
    assert_failure 1
    assert_output --partial "STATUS_NO_SUCH_DEVICE"
}

#!/usr/bin/env bats
# Mount, interrupt and unmount, as a script would drive them.

load helpers

teardown() { unmount_tree; }

@test "a reader blocked on echo dies at once on SIGINT and the device keeps serving" {
    mount_tree
    pended=$(stat_of irps_pended)
    set -m  # with job control a background job keeps SIGINT (otherwise bash ignores it there)
    cat "$MP/echo" > /dev/null &
    reader=$!
    set +m
    wait_until pended_past "$pended"     # the read waits in echo
    wait_until blocked_in "$reader" read  # and cat sleeps in read()
    kill -INT "$reader"
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        kill -0 "$reader" 2>/dev/null || break
        sleep 0.1
    done
    alive=0
    kill -0 "$reader" 2>/dev/null && alive=1
    kill -KILL "$reader" 2>/dev/null || true
    [ "$alive" -eq 0 ]
    echo again > "$MP/echo"
    run head -c 5 "$MP/echo"
    assert_output "again"
}

@test "unmount ends the daemon and leaves the directory empty" {
    mount_tree
    run "$WDMFS" unmount "$MP"
    assert_success
    run cat "$MP/null"
    assert_failure
    assert_output --partial "No such file or directory"   # the empty directory, not a dead mount
}

@test "mounting twice at the same place is refused" {
    mount_tree
    run "$WDMFS" mount "$MP"
    assert_failure 2
    assert_output --partial "already mounted"
}

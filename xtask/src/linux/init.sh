#!/bin/busybox sh
# /init of the test initramfs that `cargo xtask linux` builds (docs/linux-guests.md).
#
# Mounts /proc, /sys and /dev, prints `LINUX-INIT: started ...`, runs the test the kernel
# command line names (`test=boot|hotplug|busy|idle|phases|ticks|panic`, parameters `test.seconds=N`,
# `test.idle=N`, `test.light=N`, `test.jobs=N`, `test.rounds=N`, `test.cpus=N`), prints
# `LINUX-TEST: PASS NAME ...` or `LINUX-TEST: FAIL NAME REASON`, and powers off (PSCI
# SYSTEM_OFF). It never returns (init ending would panic the kernel), except in test=panic,
# which does that on purpose.
#
# Only ash built-ins and the applets linked in /bin are used (the list is in
# xtask/src/linux/initramfs.rs). Time is read from /proc/uptime with the `read` built-in, so
# the busy loop forks nothing while it runs.

export PATH=/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp

# NOW: centiseconds since boot, from /proc/uptime ("12.34 56.78").
now() {
    read -r up _ < /proc/uptime
    s=${up%.*}
    c=${up#*.}
    # "05" would be read as octal: drop one leading zero (there are two digits).
    c=${c#0}
    NOW=$((s * 100 + c))
}

# ONLINE: how many CPUs are online, from the ranges in /sys/devices/system/cpu/online
# ("0-3", "0,2-3", "0").
online_count() {
    read -r ranges < /sys/devices/system/cpu/online
    ONLINE=0
    old_ifs=$IFS
    IFS=,
    for r in $ranges; do
        case $r in
            *-*) ONLINE=$((ONLINE + ${r#*-} - ${r%-*} + 1)) ;;
            *) ONLINE=$((ONLINE + 1)) ;;
        esac
    done
    IFS=$old_ifs
}

# Seconds with two decimals from centiseconds: 1234 -> 12.34.
secs() {
    SECS=$(($1 / 100)).$(($1 % 100 / 10))$(($1 % 10))
}

pass() {
    echo "LINUX-TEST: PASS $TEST $*"
}

fail() {
    echo "LINUX-TEST: FAIL $TEST $*"
}

# The parameters from the kernel command line.
TEST=boot
SECONDS_ARG=5
IDLE_ARG=0
LIGHT_ARG=3
JOBS_ARG=
ROUNDS_ARG=1
CPUS_ARG=
read -r CMDLINE < /proc/cmdline
for word in $CMDLINE; do
    case $word in
        test=*) TEST=${word#test=} ;;
        test.seconds=*) SECONDS_ARG=${word#test.seconds=} ;;
        test.idle=*) IDLE_ARG=${word#test.idle=} ;;
        test.light=*) LIGHT_ARG=${word#test.light=} ;;
        test.jobs=*) JOBS_ARG=${word#test.jobs=} ;;
        test.rounds=*) ROUNDS_ARG=${word#test.rounds=} ;;
        test.cpus=*) CPUS_ARG=${word#test.cpus=} ;;
    esac
done

now
START=$NOW
secs "$START"
online_count
echo "LINUX-INIT: started test=$TEST kernel=$(uname -r) cpus=$ONLINE uptime=$SECS"

# A number that must be a whole number, else the test fails naming the parameter.
whole() {
    case $2 in
        '' | *[!0-9]*)
            fail "test.$1=$2 is not a whole number"
            return 1
            ;;
    esac
}

# boot: the kernel came up to init; report the CPUs and the time it took. With test.cpus=N,
# N CPUs must be online.
test_boot() {
    nproc=$(nproc)
    if [ -n "$CPUS_ARG" ]; then
        whole cpus "$CPUS_ARG" || return
        if [ "$ONLINE" -ne "$CPUS_ARG" ]; then
            fail "$ONLINE CPUs online, test.cpus=$CPUS_ARG"
            return
        fi
    fi
    pass "cpus=$ONLINE nproc=$nproc uptime=$SECS"
}

# hotplug: takes every CPU but 0 offline and back online, test.rounds times, checking
# /sys/devices/system/cpu/cpuN/online and the online count after each step.
test_hotplug() {
    whole rounds "$ROUNDS_ARG" || return
    total=$ONLINE
    if [ "$total" -lt 2 ]; then
        fail "only $total CPU online: nothing to take offline"
        return
    fi
    round=1
    moves=0
    while [ "$round" -le "$ROUNDS_ARG" ]; do
        for dir in /sys/devices/system/cpu/cpu[0-9]*; do
            cpu=${dir#/sys/devices/system/cpu/cpu}
            [ "$cpu" = 0 ] && continue
            [ -e "$dir/online" ] || continue
            for state in 0 1; do
                if ! echo "$state" > "$dir/online"; then
                    fail "round $round: writing $state to cpu$cpu/online failed"
                    return
                fi
                read -r got < "$dir/online"
                online_count
                want=$total
                [ "$state" = 0 ] && want=$((total - 1))
                if [ "$got" != "$state" ] || [ "$ONLINE" -ne "$want" ]; then
                    fail "round $round: cpu$cpu/online reads $got after writing $state, $ONLINE CPUs online, expected $want"
                    return
                fi
                moves=$((moves + 1))
                echo "hotplug: round $round cpu$cpu online=$state cpus=$ONLINE"
            done
        done
        round=$((round + 1))
    done
    pass "rounds=$ROUNDS_ARG transitions=$moves cpus=$ONLINE"
}

# One CPU-bound job: counts loops of 1000 additions until centisecond $1, then prints the count.
busy_job() {
    loops=0
    while :; do
        i=0
        while [ "$i" -lt 1000 ]; do
            i=$((i + 1))
        done
        loops=$((loops + 1))
        now
        [ "$NOW" -ge "$1" ] && break
    done
    echo "$loops"
}

# Runs $1 CPU-bound jobs for $2 seconds and prints each one's loop count; WORK is their sum.
# Fails (and returns 1) if a job made no progress.
run_jobs() {
    now
    end=$((NOW + $2 * 100))
    j=1
    while [ "$j" -le "$1" ]; do
        busy_job "$end" > "/tmp/busy.$j" &
        j=$((j + 1))
    done
    wait
    WORK=0
    j=1
    while [ "$j" -le "$1" ]; do
        read -r loops < "/tmp/busy.$j"
        if [ -z "$loops" ] || [ "$loops" -eq 0 ]; then
            fail "job $j made no progress"
            return 1
        fi
        echo "$TEST: job $j loops=$loops"
        WORK=$((WORK + loops))
        j=$((j + 1))
    done
}

# busy: test.jobs CPU-bound jobs (default: one per online CPU) for test.seconds, then idle for
# test.idle seconds. Every job must have made progress.
test_busy() {
    whole seconds "$SECONDS_ARG" || return
    whole idle "$IDLE_ARG" || return
    jobs=${JOBS_ARG:-$ONLINE}
    whole jobs "$jobs" || return
    now
    busy_start=$NOW
    run_jobs "$jobs" "$SECONDS_ARG" || return
    now
    busy_end=$NOW
    sleep "$IDLE_ARG"
    now
    secs $((busy_end - busy_start))
    busy_secs=$SECS
    secs $((NOW - busy_end))
    pass "jobs=$jobs loops=$WORK busy=$busy_secs idle=$SECS"
}

# phases: a light phase (idle for test.light seconds), a heavy one (test.jobs CPU-bound jobs,
# default one per online CPU, for test.seconds) and a light one again (test.idle seconds). Each
# phase starts with a line `phases: light|heavy|light-again uptime=S`, the heavy one ends with
# `phases: heavy done uptime=S`; the hypervisor's power decisions can be read against them.
test_phases() {
    whole light "$LIGHT_ARG" || return
    whole seconds "$SECONDS_ARG" || return
    whole idle "$IDLE_ARG" || return
    jobs=${JOBS_ARG:-$ONLINE}
    whole jobs "$jobs" || return
    now
    secs "$NOW"
    echo "phases: light uptime=$SECS"
    sleep "$LIGHT_ARG"
    now
    secs "$NOW"
    echo "phases: heavy uptime=$SECS"
    run_jobs "$jobs" "$SECONDS_ARG" || return
    now
    secs "$NOW"
    echo "phases: heavy done uptime=$SECS"
    echo "phases: light-again uptime=$SECS"
    sleep "$IDLE_ARG"
    pass "light=$LIGHT_ARG jobs=$jobs loops=$WORK heavy=$SECONDS_ARG idle=$IDLE_ARG"
}

# ticks: test.seconds ticks about a second apart (`sleep 1`, then a little work), each printed
# as `ticks: N uptime=S`. Fails unless the uptime clock moved forward between ticks and at least
# test.seconds passed in all. A run stopped and carried on elsewhere (a checkpoint) goes on
# with the next tick.
test_ticks() {
    whole seconds "$SECONDS_ARG" || return
    now
    before=$NOW
    last=$NOW
    n=1
    while [ "$n" -le "$SECONDS_ARG" ]; do
        sleep 1
        i=0
        while [ "$i" -lt 1000 ]; do
            i=$((i + 1))
        done
        now
        if [ "$NOW" -le "$last" ]; then
            secs "$NOW"
            fail "tick $n: the uptime clock reads ${SECS}s, not later than the tick before"
            return
        fi
        last=$NOW
        secs "$NOW"
        echo "ticks: $n uptime=$SECS"
        n=$((n + 1))
    done
    secs $((NOW - before))
    if [ $((NOW - before)) -lt $((SECONDS_ARG * 100)) ]; then
        fail "$SECONDS_ARG ticks took ${SECS}s"
        return
    fi
    pass "ticks=$SECONDS_ARG elapsed=$SECS"
}

# idle: sleeps test.seconds; at least that long must pass on the uptime clock.
test_idle() {
    whole seconds "$SECONDS_ARG" || return
    now
    before=$NOW
    sleep "$SECONDS_ARG"
    now
    slept=$((NOW - before))
    secs "$slept"
    if [ "$slept" -lt $((SECONDS_ARG * 100)) ]; then
        fail "slept ${SECS}s, asked for ${SECONDS_ARG}s"
        return
    fi
    pass "slept=$SECS"
}

# panic: init exits, which the kernel answers with a panic ("Attempted to kill init"). For the
# hypervisor's tests: a guest whose kernel panics must not disturb the others.
test_panic() {
    echo "panic: init exits now"
    exit 1
}

case $TEST in
    boot) test_boot ;;
    hotplug) test_hotplug ;;
    busy) test_busy ;;
    idle) test_idle ;;
    phases) test_phases ;;
    ticks) test_ticks ;;
    panic) test_panic ;;
    *) fail "unknown test (known: boot, hotplug, busy, idle, phases, ticks, panic)" ;;
esac

now
secs "$NOW"
echo "LINUX-INIT: powering off uptime=$SECS"
poweroff -f
# poweroff returns only if SYSTEM_OFF failed; init must not exit.
echo "LINUX-INIT: poweroff failed"
while :; do sleep 3600; done

# Sourced by bench/run and bench/meter: what both need.
#
# wrk_rps and wrk_run expect $dir (a scratch directory) and $conns.

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
    || perl -MIO::Socket::INET -e 'print IO::Socket::INET->new(Listen=>1,LocalAddr=>"127.0.0.1:0")->sockport'
}

# waits for a Redis on port $1 to answer
wait_redis() {
    for _ in $(seq 50); do
        redis-cli -p "$1" ping > /dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "bench: Redis on port $1 did not start" >&2
    exit 1
}

# waits for an nginx to answer GET $1 (any status), $2 tenths of a second
wait_http() {
    for _ in $(seq "${2:-50}"); do
        curl -s -o /dev/null "$1" && return 0
        sleep 0.1
    done
    echo "bench: $1 did not answer" >&2
    exit 1
}

# one wrk run into $dir/wrk.out; any answer but 2xx voids the run
wrk_run() {
    wrk "$@" > "$dir/wrk.out"

    if grep -q 'Non-2xx' "$dir/wrk.out"; then
        echo "bench: answers other than 2xx:" >&2
        cat "$dir/wrk.out" >&2
        exit 1
    fi
}

# requests per second of one wrk run of $time seconds, $conns connections
wrk_rps() {
    wrk_run -t1 -c"$conns" -d"${time}s" "$@"
    awk '/^Requests\/sec:/ { print $2 }' "$dir/wrk.out"
}

median() {
    sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

# CPU time of process $1 so far, in ns: its main thread's time on a CPU
# (/proc/PID/schedstat), or utime + stime (/proc/PID/stat, clock ticks)
# where the kernel has no schedstat
cpu_ns() {
    if [ -r "/proc/$1/schedstat" ]; then
        awk '{ print $1 }' "/proc/$1/schedstat"
    else
        awk -v hz="$(getconf CLK_TCK)" '{ printf "%.0f\n", ($14 + $15) * 1e9 / hz }' \
            "/proc/$1/stat"
    fi
}

# CPU time of process $1 so far, all its threads, in ns: the sum of its
# tasks' time on a CPU (/proc/PID/task/*/schedstat), or utime + stime
# (/proc/PID/stat, clock ticks) where the kernel has no schedstat.  For
# Node (its V8 and libuv threads) and Redis (its bio threads) as well
# as nginx.
proc_cpu_ns() {
    if [ -r "/proc/$1/schedstat" ]; then
        cat /proc/"$1"/task/*/schedstat 2>/dev/null \
        | awk '{ t += $1 } END { printf "%.0f\n", t }'
    else
        awk -v hz="$(getconf CLK_TCK)" '{ printf "%.0f\n", ($14 + $15) * 1e9 / hz }' \
            "/proc/$1/stat"
    fi
}

# the pids of process $1's children (an nginx master's workers), without
# procps
children() {
    grep -l "^PPid:[[:space:]]*$1\$" /proc/[0-9]*/status 2>/dev/null \
    | sed 's|^/proc/\([0-9]*\)/status$|\1|' | tr '\n' ' '
}

#!/bin/sh
# Prints "A B F" from the running kernel's BTF: A = offsetof(struct cfs_bandwidth, period_timer)
# and B = offsetof(struct task_group, cfs_bandwidth) in bytes, the peer scripts' $1 and $2
# (bpftrace 0.17, Debian 12's, has no offsetof() to write container_of with); F = the name of
# cfs_rq's queued-tasks count, h_nr_queued where the kernel renamed it (6.14, and Debian's
# 6.12), else h_nr_running: the bench puts it in place of h_nr_running in the peer scripts.
# Used on the host and in the bench guests alike (sh, awk and bpftool only).
BTF="${1:-/sys/kernel/btf/vmlinux}"
bpftool btf dump file "$BTF" format raw | awk -v q="'" '
  /^\[/ { s = $3; next }
  s == q "cfs_bandwidth" q && $1 == q "period_timer" q { split($3, a, "="); pt = a[2] / 8 }
  s == q "task_group" q && $1 == q "cfs_bandwidth" q { split($3, a, "="); tg = a[2] / 8 }
  s == q "cfs_rq" q && $1 == q "h_nr_queued" q { f = "h_nr_queued" }
  END { if (pt == "" || tg == "") exit 1; print pt, tg, (f == "" ? "h_nr_running" : f) }'

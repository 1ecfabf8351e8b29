#!/usr/bin/env python3
"""Turns the raw measurements of benches/run.sh into the Markdown report.

Input: a file of lines `key value...` (see run.sh). Keys repeated once per repetition
(uploads, downloads) are summarised by their median; every single value is listed too.
"""

import statistics
import sys
from collections import defaultdict

MIB = 1024 * 1024


def load(path):
    meta, vals = {}, defaultdict(list)
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            key, _, rest = line.partition(" ")
            if key.startswith("meta."):
                meta[key[5:]] = rest
            else:
                vals[key].append(float(rest))
    return meta, vals


def med(vals, key):
    v = vals.get(key)
    return statistics.median(v) if v else None


def fmt(x, digits):
    if x is None:
        return "n/a"
    return f"{x:,.{digits}f}"


def main():
    meta, vals = load(sys.argv[1])
    L, M = "lanvan", "miniserve"

    # (label, key, digits, scale, higher_is_better)
    size = int(meta.get("size_mib", "1024"))
    big = "1 GiB" if size == 1024 else f"{size} MiB"
    rows = [
        (f"Upload {big}, MB/s (LANVan: chunk hashes verified; miniserve: unverified multipart)",
         "upload_mbps", 0, 1, True),
        ("Upload, server CPU s/GiB", "upload_cpu", 2, 1, False),
        (f"Download {big}, MB/s", "download_mbps", 0, 1, True),
        ("Download, server CPU s/GiB", "download_cpu", 3, 1, False),
        ("4 KiB GET, requests/s (wrk -t1 -c16 -d10s)", "rps", 0, 1, True),
        ("4 KiB GET, p99 latency ms", "p99_ms", 2, 1, False),
        ("4 KiB GET, server CPU µs/request", "us_per_req", 1, 1, False),
        ("Idle RSS right after start, MiB", "rss_start_kib", 2, 1 / 1024, False),
        ("Idle RSS after 5 s idle, MiB", "rss_idle_kib", 2, 1 / 1024, False),
        ("Peak RSS (VmHWM) at the end, MiB", "peak_kib", 1, 1 / 1024, False),
        ("Threads when idle", "threads", 0, 1, False),
    ]

    out = []
    p = out.append
    p(f"- Date: {meta.get('date', '?')}")
    p(f"- Machine: `{meta.get('arch', '?')}`, {meta.get('cpu', '?')}, {meta.get('cores', '?')} cores, "
      f"{meta.get('mem', '?')} RAM; data and test files on tmpfs ({meta.get('workdir', '?')})")
    p(f"- Kernel: {meta.get('kernel', '?')}")
    p(f"- LANVan: {meta.get('lanvan', '?')}; miniserve: {meta.get('miniserve', '?')}; "
      f"wrk: {meta.get('wrk', '?')}; client: {meta.get('python', '?')} + curl")
    p(f"- Command: `{meta.get('command', '?')}`")
    p(f"- Servers: `{meta.get('lanvan_cmd', '?')}` and `{meta.get('miniserve_cmd', '?')}`")
    p(f"- Repetitions of each {big} upload/download: {meta.get('reps', '?')} "
      "(table shows the median; every run is listed below)")
    p(f"- Memory warm-up before each upload: {meta.get('warm', '?')}")
    p("")
    p("| metric | LANVan | miniserve | ratio (LANVan/miniserve) |")
    p("| --- | ---: | ---: | ---: |")
    for label, key, digits, scale, _ in rows:
        a, b = med(vals, f"{L}.{key}"), med(vals, f"{M}.{key}")
        a = a * scale if a is not None else None
        b = b * scale if b is not None else None
        ratio = f"{a / b:.2f}×" if a is not None and b else "n/a"
        p(f"| {label} | {fmt(a, digits)} | {fmt(b, digits)} | {ratio} |")
        if f"{L}.{key}_sys" in vals or f"{M}.{key}_sys" in vals:
            a, b = med(vals, f"{L}.{key}_sys"), med(vals, f"{M}.{key}_sys")
            ratio = f"{a / b:.2f}×" if a is not None and b else "n/a"
            p(f"| … of which in the kernel (stime) | {fmt(a, digits)} | {fmt(b, digits)} | {ratio} |")
    c = med(vals, f"{L}.upload_client_cpu")
    if c is not None:
        p(f"| Upload, client CPU s/GiB (LANVan: Python client incl. chunk hashing; miniserve: curl, not measured) "
          f"| {fmt(c, 2)} | n/a | n/a |")
    p("")

    up_l, up_m = med(vals, f"{L}.upload_mbps"), med(vals, f"{M}.upload_mbps")
    cpu_up = med(vals, f"{L}.upload_cpu")
    cpu_dn = med(vals, f"{L}.download_cpu")
    idle = max(vals.get(f"{L}.rss_start_kib", [0]) + vals.get(f"{L}.rss_idle_kib", [0])) / 1024

    def yes(ok):
        return "**met**" if ok else "**NOT met**"

    p("| target | measured (LANVan) | result |")
    p("| --- | --- | --- |")
    rate_ok = up_l is not None and up_m and up_l >= 1.2 * up_m
    cpu_ok = cpu_up is not None and cpu_up <= 1.2
    p(f"| upload ≥ 1.2× miniserve's rate | {fmt(up_l / up_m if up_m else None, 2)}× | {yes(rate_ok)} |")
    p(f"| … at ≤ 1.2 server CPU s/GiB | {fmt(cpu_up, 2)} s/GiB | {yes(cpu_ok)} |")
    p(f"| download ≤ 0.1 server CPU s/GiB | {fmt(cpu_dn, 3)} s/GiB | {yes(cpu_dn is not None and cpu_dn <= 0.1)} |")
    p(f"| idle RSS ≤ 4 MiB (worse of at-start and after 5 s) | {idle:.2f} MiB | {yes(idle <= 4.0)} |")
    p("")

    p("Every run:")
    p("")
    for srv in (L, M):
        for key, label, d in (("upload_mbps", "upload MB/s", 0),
                              ("upload_cpu", "upload server CPU s/GiB", 2),
                              ("download_mbps", "download MB/s", 0),
                              ("download_cpu", "download server CPU s/GiB", 3)):
            v = vals.get(f"{srv}.{key}", [])
            p(f"- {srv} {label}: " + ", ".join(fmt(x, d) for x in v))
    print("\n".join(out))


if __name__ == "__main__":
    main()

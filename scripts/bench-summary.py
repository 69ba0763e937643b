#!/usr/bin/env python3
"""Reads the parts scripts/bench wrote into DIR and prints the summary against issue 17's
targets (markdown); with --readme FILE, rewrites FILE's table between its bench markers.

    bench-summary.py DIR PNG_NAME [--readme README.md]
"""
import re
import sys


def table(path):
    """Exec latency rows: (program, side) -> dict of the columns."""
    rows = {}
    try:
        text = open(path).read()
    except OSError:
        return rows
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 9 or cells[0] in ("program", "---") or cells[2] == "n/a":
            continue
        try:
            rows[(cells[0], cells[1])] = {
                "median": float(cells[2]),
                "overhead": float(cells[5]),
                "cpu": float(cells[7]) if cells[7] not in ("-", "") else None,
            }
        except ValueError:
            continue
    return rows


def results(path):
    out = {}
    try:
        for line in open(path):
            k, _, v = line.strip().partition("=")
            try:
                out[k] = float(v)
            except ValueError:
                pass
    except OSError:
        pass
    return out


def ratio(a, b):
    if a is None or b is None or b <= 0:
        return None
    return a / b


def fmt(x, unit="x"):
    return "n/a" if x is None else f"{x:.2f}{unit}"


def verdict(x, limit, at_most=True):
    if x is None:
        return "not judged"
    ok = x <= limit if at_most else x >= limit
    return "met" if ok else "missed"


def main():
    d, png = sys.argv[1], sys.argv[2]
    readme = sys.argv[4] if len(sys.argv) > 4 and sys.argv[3] == "--readme" else None
    all_cpus = table(d + "/exec.md")
    one_cpu = table(d + "/exec1.md")
    res = results(d + "/results")
    work = []
    try:
        for line in open(d + "/work.md"):
            if line.startswith("| ") and not line.startswith("| workload"):
                work.append([c.strip() for c in line.strip().strip("|").split("|")])
    except OSError:
        pass

    def get(rows, prog, side, col):
        r = rows.get((prog, side))
        return None if r is None else r[col]

    lines = []
    add = lines.append
    add("## Targets, from this run")
    add("")
    add("| target | limit | all CPUs | one CPU | verdict (one CPU; all CPUs) |")
    add("|---|---|---|---|---|")
    for col, what in (("overhead", "warm exec overhead ({}) / the floor's"),
                      ("cpu", "listener CPU per warm exec ({}) / the floor's")):
        for prog in ("static", "dynamic /usr/bin/true"):
            vals = [ratio(get(rows, prog, "driftlock warm", col), get(rows, prog, "floor", col))
                    for rows in (all_cpus, one_cpu)]
            add(f"| {what.format(prog)} | ≤ 1.25x | {fmt(vals[0])} | {fmt(vals[1])} | {verdict(vals[1], 1.25)}; {verdict(vals[0], 1.25)} |")
    vals = [ratio(get(r, "static", "driftlock cold deny", "cpu"), get(r, "static", "driftlock warm", "cpu"))
            for r in (all_cpus, one_cpu)]
    add(f"| cold denial, recorded (its process read before the answer, on the denial thread): event thread CPU / a warm hit's | ≤ 1.5x | {fmt(vals[0])} | {fmt(vals[1])} | {verdict(vals[1], 1.5)}; {verdict(vals[0], 1.5)} |")
    add(f"| cold denial in a flood (2,000 denials, the record budget spent): event thread CPU / a warm hit's | ≤ 1.5x | {fmt(res.get('flood_ratio'))} | | {verdict(res.get('flood_ratio'), 1.5)} |")
    vals = [ratio(get(r, "dynamic, loader checked", "driftlock warm", "overhead"),
                  get(r, "dynamic, loader checked", "floor", "overhead")) for r in (all_cpus, one_cpu)]
    add(f"| dynamic exec, loader checked: overhead / the floor's (two events) | ≤ 1.5x | {fmt(vals[0])} | {fmt(vals[1])} | {verdict(vals[1], 1.5)}; {verdict(vals[0], 1.5)} |")
    units = int(res.get("scale_units", 0))
    add(f"| warm exec CPU with {units} units / with 1 | ≤ 1.1x | {fmt(res.get('scale_cpu_ratio'))} (latency {fmt(res.get('scale_lat_ratio'))}) | | {verdict(res.get('scale_cpu_ratio'), 1.1)} |")
    add(f"| arm time with {units} units on the node / with 31 (the last 30 arms against units 2 to 31 on a node of 31) | ≤ 1.5x | {fmt(res.get('scale_arm_ratio'))} ({res.get('scale_arm_last_ms', 0):.2f} ms against {res.get('scale_arm30_ms', 0):.2f} ms) | | {verdict(res.get('scale_arm_ratio'), 1.5)} |")
    add(f"| exec storm throughput / the floor's | ≥ 0.8x | {fmt(res.get('storm_ratio'))} | | {verdict(res.get('storm_ratio'), 0.8, at_most=False)} |")
    add(f"| added `ctr run --rm` start, stored baseline, through driftlock-runtime | ≤ 5 ms | {fmt(res.get('start_added_ms'), ' ms')} | | {verdict(res.get('start_added_ms'), 5.0)} |")
    add(f"| added start without the wrapper (containerd's CRI base runtime spec: the hooks, plain runc), stored baseline | ≤ 5 ms | {fmt(res.get('start_base_spec_added_ms'), ' ms')} | | {verdict(res.get('start_base_spec_added_ms'), 5.0)} |")
    add(f"| (the least a hook pays: runc running a createRuntime hook that does nothing, `/usr/bin/true`) | reported | {fmt(res.get('start_noop_hook_ms'), ' ms')} | | reported |")
    for w in work:
        if len(w) >= 9:
            add(f"| {w[0]} ({w[1]}): driftlock's overhead against fapolicyd's | reported | driftlock {w[-3]}, fapolicyd {w[-1]} (floor {w[-2]}) | | reported |")
    cold = get(all_cpus, "static", "driftlock cold", "overhead")
    add("")
    add(f"Cold allow (every exec a new copy of the static program, hashed by the worker pool): {fmt(cold, ' µs')} over *none* on all CPUs. Where a target is missed, the sections below say by how much and where the time goes.")
    text = "\n".join(lines)
    if readme is None:
        print(text)
        return
    # The README's table: a few rows, each from this run.
    def row(name, prog, extra=""):
        o = get(all_cpus, prog, "driftlock warm", "overhead")
        f = get(all_cpus, prog, "floor", "overhead")
        c1 = ratio(get(one_cpu, prog, "driftlock warm", "cpu"), get(one_cpu, prog, "floor", "cpu"))
        fa = get(all_cpus, prog, "fapolicyd permissive", "overhead")
        return (f"| {name} | {o:+.1f} µs (floor {f:+.1f} µs, fapolicyd permissive "
                f"{'n/a' if fa is None else f'{fa:+.1f} µs'}); listener CPU {fmt(c1)} the floor's on one CPU "
                f"(target ≤ 1.25x: {verdict(c1, 1.25)}){extra} |"
                if o is not None and f is not None else f"| {name} | n/a |")
    loader = ratio(get(one_cpu, "dynamic, loader checked", "driftlock warm", "overhead"),
                   get(one_cpu, "dynamic, loader checked", "floor", "overhead"))
    recorded = ratio(get(one_cpu, 'static', 'driftlock cold deny', 'cpu'), get(one_cpu, 'static', 'driftlock warm', 'cpu'))
    t = ["<!-- bench-table:start (written by ./scripts/bench from BENCHMARKS.md) -->",
         "| measurement (one run of `./scripts/bench`, see BENCHMARKS.md) | result |",
         "|---|---|",
         row("warm exec, static binary", "static"),
         row("warm exec, dynamic `/usr/bin/true`", "dynamic /usr/bin/true"),
         row("dynamic exec, loader on the marked filesystem (2 events + loader check)", "dynamic, loader checked",
             f"; overhead {fmt(loader)} the floor's on one CPU (target ≤ 1.5x: {verdict(loader, 1.5)})"),
         f"| cold denial (a size no image executable has) | event thread CPU {fmt(res.get('flood_ratio'))} a warm hit's in a flood; {fmt(recorded)} when recorded (its process read before the answer, on a thread of its own) (target ≤ 1.5x: {verdict(recorded, 1.5)}) |",
         f"| {units} armed units | warm exec CPU {fmt(res.get('scale_cpu_ratio'))} that of 1 unit (target ≤ 1.1x: {verdict(res.get('scale_cpu_ratio'), 1.1)}); arm {res.get('scale_arm_ms', 0):.1f} ms each, the last 30 {fmt(res.get('scale_arm_ratio'))} the first 30 (with every unit's mounts on the node; target ≤ 1.5x: {verdict(res.get('scale_arm_ratio'), 1.5)}, see BENCHMARKS.md); daemon RSS {res.get('scale_rss_mb', 0):.0f} MB |",
         f"| exec storm (50 units, both cores busy) | {fmt(res.get('storm_ratio'))} the floor's throughput (target ≥ 0.8x: {verdict(res.get('storm_ratio'), 0.8, at_most=False)}) |",
         f"| `ctr run --rm` of `/bin/true` | +{res.get('start_added_ms', 0):.1f} ms with a stored baseline through driftlock-runtime, +{res.get('start_base_spec_added_ms', 0):.1f} ms without it (containerd's base runtime spec; runc alone {res.get('start_runc_ms', 0):.0f} ms; runc running a hook that does nothing +{res.get('start_noop_hook_ms', 0):.1f} ms) (target ≤ 5 ms: {verdict(res.get('start_base_spec_added_ms'), 5.0)} without the wrapper, {verdict(res.get('start_added_ms'), 5.0)} through it) |"]
    for w in work:
        if len(w) >= 9:
            t.append(f"| {w[0]} ({w[1]} mode) | driftlock {w[-3]}, floor {w[-2]}, fapolicyd permissive {w[-1]} |")
    t.append("<!-- bench-table:end -->")
    src = open(readme).read()
    new, n = re.subn(r"<!-- bench-table:start.*?<!-- bench-table:end -->", "\n".join(t), src, flags=re.S)
    if n != 1:
        sys.exit(f"{readme}: no bench-table markers")
    open(readme, "w").write(new)


main()

#!/usr/bin/env python3
"""Writes the README's kernel support matrix from the guest matrix's results.

    ./scripts/support-matrix.py [target/tmp/guest-matrix.txt] [README.md]

Each line of the results (written by scripts/guest-test) is
`PACKAGE|LSM-RUN|ACTIVE-LSMS|doctor key=value ...|pass|FAIL`. Kernels no package registry
here carries get a row from their version alone, marked "not tested here". The table goes
between the `support-matrix` markers of the README.
"""
import re
import sys

BEGIN = "<!-- support-matrix:begin (scripts/support-matrix.py writes this table) -->"
END = "<!-- support-matrix:end -->"

# Kernels fleets run that no registry reachable here carries: version only.
UNTESTED = [
    ("Ubuntu 22.04", "5.15"),
    ("RHEL 9", "5.14"),
    ("Amazon Linux 2", "5.10"),
    ("Amazon Linux 2023", "6.1"),
    ("Ubuntu 24.04", "6.8"),
]


def version(text):
    m = re.match(r"(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def coverage(v, gate, memfd):
    """Columns for a kernel of version v with the gate (True/False/None: if bpf listed)."""
    gate_txt = {True: "yes", False: "no", None: "only with `bpf` in `lsm=`"}[gate]
    if memfd:
        fileless = "`vm.memfd_noexec`" + (" and the gate" if gate else "")
    elif gate is True:
        fileless = "the gate"
    elif gate is None:
        fileless = "the gate (if loaded); else **not covered**"
    else:
        fileless = "**not covered**"
    if gate is False:
        mprotect = "n/a (no gate)"
    elif v >= (6, 6):
        mprotect = "refused" if gate else "refused if the gate loads"
    else:
        mprotect = "**not judged** (no backing files before 6.6)"
    libs = {
        True: "refused on the container's own filesystems, and on a volume shared with the host once a container wrote it",
        False: "with `library_control` only",
        None: "refused if the gate loads; else with `library_control`",
    }[gate]
    return [gate_txt, libs, fileless, mprotect]


def tested_rows(lines):
    rows = []
    for line in lines:
        parts = line.strip().removeprefix("MATRIX ").split("|")
        if len(parts) != 5:
            continue
        pkg, lsm_run, lsms, doctor, result = parts
        kv = dict(p.split("=", 1) for p in doctor.split() if "=" in p)
        m = re.match(r"linux-image-(\d+\.\d+)", pkg)
        v = version(m.group(1)) if m else (0, 0)
        gate = kv.get("mapping_gate") == "true"
        memfd = kv.get("memfd_noexec") == "true"
        boot = "Debian's own list" if lsm_run == "debian" else "`lsm=…,bpf`"
        name = pkg.replace("linux-image-", "")
        rows.append(
            [f"Debian `{name}`", boot, "yes"]
            + coverage(v, gate, memfd)
            + [f"{kv.get('verdict', '?')} (exit {kv.get('exit', '?')})",
               "guest matrix: " + ("pass" if result == "pass" else "**FAIL**")]
        )
    return rows


def untested_rows():
    rows = []
    for name, ver in UNTESTED:
        v = version(ver)
        memfd = v >= (6, 3)
        full = v >= (6, 6)
        rows.append(
            [f"{name} ({ver})", "not known here", "yes"]
            + coverage(v, None, memfd)
            + ["full if the gate loads" if full else "degraded", "not tested here"]
        )
    return rows


def table(rows):
    head = ["kernel", "LSM list booted", "exec gate (fanotify: drops in /tmp, volumes, rootfs; the loader)",
            "mapping gate", "LD_PRELOAD / ld.so.preload / dlopen of a dropped library",
            "fileless exec (memfd) refused by", "overlay file mapped read-only then mprotect'ed executable",
            "`driftlock doctor`", "evidence"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def main():
    results = sys.argv[1] if len(sys.argv) > 1 else "target/tmp/guest-matrix.txt"
    readme = sys.argv[2] if len(sys.argv) > 2 else "README.md"
    with open(results) as f:
        rows = tested_rows(f.readlines())
    if not rows:
        sys.exit(f"support-matrix: no results in {results}")
    text = open(readme).read()
    if BEGIN not in text or END not in text:
        sys.exit(f"support-matrix: no markers in {readme}")
    before, rest = text.split(BEGIN, 1)
    _, after = rest.split(END, 1)
    body = table(rows + untested_rows())
    open(readme, "w").write(f"{before}{BEGIN}\n{body}\n{END}{after}")
    print(f"support-matrix: {len(rows)} tested kernel run(s) written to {readme}")


if __name__ == "__main__":
    main()

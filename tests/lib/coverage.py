#!/usr/bin/env python3
"""Line coverage per source file from a --coverage build (gcov, no gcovr).

    coverage.py BUILD [--min PERCENT] SOURCE...

Runs `gcov -n` on the objects of BUILD for each SOURCE (arbiter/x.c is
read from BUILD/arbiter/x.gcda), prints one line per file and a total per
folder. Files never run show 0 %. With --min, exits 1 when a daemon file
(arbiter/) is below PERCENT.
"""
import os
import re
import subprocess
import sys
from collections import defaultdict


def file_coverage(build, src):
    """(lines executed, lines) of src, or (0, None) without data."""
    obj_dir = os.path.join(build, os.path.dirname(src))
    gcno = os.path.join(obj_dir, os.path.basename(src)[:-2] + ".gcno")
    if not os.path.exists(gcno):
        return 0, None
    r = subprocess.run(["gcov", "-n", "-o", obj_dir, src],
                       capture_output=True, text=True)
    # gcov prints a block per file (headers included); keep src's own.
    blocks = re.findall(r"File '([^']+)'\nLines executed:([\d.]+)% of (\d+)",
                        r.stdout)
    for name, pct, total in blocks:
        if os.path.normpath(name) == os.path.normpath(src):
            total = int(total)
            return round(float(pct) * total / 100), total
    # No .gcda yet: compiled but never run.
    m = re.search(r"No executable lines|cannot open data file", r.stdout +
                  r.stderr)
    return 0, 0 if m is None else None


def main():
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    build, args = args[0], args[1:]
    minimum = None
    if "--min" in args:
        i = args.index("--min")
        minimum = float(args[i + 1])
        del args[i:i + 2]
    totals = defaultdict(lambda: [0, 0])
    below = []
    print("%-28s %7s %7s %7s" % ("file", "lines", "run", "cover"))
    for src in sorted(args):
        run, total = file_coverage(build, src)
        if total is None:
            print("%-28s %7s %7s %7s" % (src, "-", "-", "no data"))
            continue
        pct = 100.0 * run / total if total else 100.0
        print("%-28s %7d %7d %6.1f%%" % (src, total, run, pct))
        folder = os.path.dirname(src)
        totals[folder][0] += run
        totals[folder][1] += total
        if minimum is not None and folder == "arbiter" and pct < minimum:
            below.append("%s %.1f%%" % (src, pct))
    for folder, (run, total) in sorted(totals.items()):
        print("%-28s %7d %7d %6.1f%%" % (folder + "/ (all)", total, run,
                                         100.0 * run / max(total, 1)))
    if below:
        print("below %.0f%%: %s" % (minimum, ", ".join(below)))
        sys.exit(1)


if __name__ == "__main__":
    main()

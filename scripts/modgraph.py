#!/usr/bin/env python3
"""The import graph between usernet's top-level modules (src/*), from `crate::` paths in code
(comments and test modules aside). Prints each module's imports; exits 1 if two modules
reach each other (an import cycle), naming the lines. Run by .ci/run; see
docs/ARCHITECTURE.md ("no import cycle between top-level modules")."""
import collections
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def files_of(mod):
    d = os.path.join(ROOT, mod)
    if os.path.isdir(d):
        for dp, _, fs in os.walk(d):
            yield from (os.path.join(dp, f) for f in fs if f.endswith(".rs"))
    if os.path.exists(d + ".rs"):
        yield d + ".rs"


def graph():
    mods = sorted({n[:-3] if n.endswith(".rs") else n for n in os.listdir(ROOT)} - {"lib", "bin", "main"})
    g = {m: collections.defaultdict(list) for m in mods}
    for m in mods:
        for p in files_of(m):
            with open(p) as f:
                for ln, line in enumerate(f, 1):
                    if line.startswith("#[cfg(test)]") or line.startswith("mod tests"):
                        break  # test modules sit at the end of a file
                    code = line.split("//")[0]
                    found = set(re.findall(r"crate::([a-z_]+)", code))
                    for grp in re.findall(r"crate::\{([^}]*)", code):
                        found |= set(re.findall(r"(?:^|[\s,{])([a-z_]+)", grp))
                    for t in found - {m}:
                        if t in g:
                            g[m][t].append(f"{os.path.relpath(p, os.path.dirname(ROOT))}:{ln}")
    return g


def reaches(g, a, b):
    seen, todo = set(), [a]
    while todo:
        for n in g[todo.pop()]:
            if n == b:
                return True
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return False


def main():
    g = graph()
    for m, deps in g.items():
        print(f"{m} -> {', '.join(sorted(deps)) or '(nothing)'}")
    bad = sorted({tuple(sorted((a, b))) for a in g for b in g[a] if reaches(g, b, a)})
    for a, b in bad:
        print(f"cycle: {a} and {b} reach each other; {a} -> {b} at {g[a].get(b, ['(indirect)'])[:3]}, "
              f"{b} -> {a} at {g[b].get(a, ['(indirect)'])[:3]}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

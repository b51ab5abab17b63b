"""Per-file mutation score from `mutmut results --all true` on stdin (used by `make mutation`):
killed / (mutants - skipped), as mutmut counts it; timeouts count as killed."""

from __future__ import annotations

import collections
import sys


def main() -> int:
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in sys.stdin:
        if ":" not in line:
            continue
        name, status = line.strip().rsplit(":", 1)
        module = name.split(".x", 1)[0]            # raintools.tree.x_backup__mutmut_3 -> raintools.tree
        counts[module][status.strip()] += 1
    for module, c in sorted(counts.items()):
        total = sum(c.values()) - c["skipped"]
        killed = c["killed"] + c["timeout"]
        rest = "; ".join(f"{n} {s}" for s, n in sorted(c.items()) if s != "killed")
        print(f"{module}: {total} mutants, {killed} killed ({100 * killed / max(total, 1):.1f}%)"
              + (f"; {rest}" if rest else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

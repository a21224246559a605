"""Print how the apps import each other and how big their modules are (docs/ARCHITECTURE.md).

    .venv/bin/python scripts/layers_report.py

For each ordered pair of packages, the number of imports from one to the other (module-level and
function-level alike), marked UP where a lower layer imports a higher one; the modules that sit
on an import cycle between packages; and the modules over 500 lines. `lint-imports` is the check;
this is the picture, for before-and-after figures.
"""

from __future__ import annotations

import sys
from itertools import permutations
from pathlib import Path

import grimp

ROOT = Path.cwd()  # run from the repository root
LAYERS = ["config", "dispatch", "payouts", "marketplace", "core"]  # top to bottom
LIMIT = 500


def package_of(module: str) -> str:
    return module.split(".")[0]


def main() -> int:
    sys.path.insert(0, str(ROOT))
    graph = grimp.build_graph(*LAYERS)
    modules = {m for m in graph.modules if package_of(m) in LAYERS and ".migrations." not in m}
    print("imports between packages (importer -> imported: count)")
    upward = 0
    for importer, imported in permutations(LAYERS, 2):
        count = sum(
            len(graph.get_import_details(importer=a, imported=b))
            for a in modules
            if package_of(a) == importer
            for b in graph.find_modules_directly_imported_by(a)
            if package_of(b) == imported
        )
        if count:
            up = LAYERS.index(importer) > LAYERS.index(imported)
            upward += count if up else 0
            print(f"  {importer:12} -> {imported:12} {count:4}{'  UP' if up else ''}")
    print(f"upward imports: {upward}")

    on_cycles = set()
    for a in modules:
        for b in graph.find_modules_directly_imported_by(a):
            if b in modules and package_of(a) != package_of(b):
                chain = graph.find_shortest_chain(importer=b, imported=a)
                if chain:
                    on_cycles.update(chain)
                    on_cycles.add(a)
    packages = sorted({package_of(m) for m in on_cycles})
    print(f"modules on an import cycle across packages: {len(on_cycles)} (packages: {', '.join(packages) or 'none'})")

    sizes = []
    for module in modules:
        path = ROOT / Path(*module.split("."))
        file = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        if file.exists():
            sizes.append((sum(1 for _ in file.open(encoding="utf-8")), str(file.relative_to(ROOT))))
    sizes.sort(reverse=True)
    over = [s for s in sizes if s[0] > LIMIT]
    print(f"modules over {LIMIT} lines: {len(over)}")
    for lines, name in sizes[:5]:
        print(f"  {lines:5} {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The house: the pure core imports nothing heavy, imports run one way down the floors, no circles, no machine paths."""

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Floors from the ground up (docs/design.md §5): a module may import its own floor or lower ones, never higher.
FLOORS = [
    ("orchestrator.core",),
    ("orchestrator.state",),
    ("actors.backends", "actors.codecs"),
    ("actors",),
    ("orchestrator.engine",),
    ("training.world",),
    ("training.recipe",),
    ("training.evaluation",),
    ("orchestrator.entry",),
    ("pavdm",),
    ("benchmarks",),
]
CORE_FORBIDDEN = {"ray", "diffusers", "av", "pyarrow", "transformers", "fastapi", "prometheus_client"}


def product_modules() -> dict[str, Path]:
    """Every Python module of the product (tests aside), by dotted name."""
    modules = {}
    for top in ("orchestrator", "actors", "training", "pavdm", "benchmarks"):
        for path in (ROOT / top).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(path: Path) -> set[str]:
    """Every module an import statement in the file names, at any depth (lazy imports inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def floor_of(module: str) -> int:
    """The floor of the most specific prefix that names the module."""
    matches = [(len(prefix), index) for index, prefixes in enumerate(FLOORS) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} stands on no floor"
    return max(matches)[1]


MODULES = product_modules()


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("orchestrator.core")))
def test_the_pure_core_imports_nothing_heavy_and_nothing_above_it(module):
    for name in imports_of(MODULES[module]):
        assert name.split(".")[0] not in CORE_FORBIDDEN, f"{module} imports {name}"
        if name.split(".")[0] in ("orchestrator", "actors", "training", "pavdm", "benchmarks", "tests"):
            assert name.startswith("orchestrator.core"), f"{module} imports {name}, outside the core"


def project_edges() -> dict[str, set[str]]:
    edges = {}
    for module, path in MODULES.items():
        edges[module] = {name for name in imports_of(path) if name in MODULES and name != module}
    return edges


def test_imports_run_one_way_down_the_floors():
    upward = [f"{a} -> {b}" for a, targets in project_edges().items() for b in targets if floor_of(b) > floor_of(a)]
    assert upward == []


def test_no_import_circles():
    edges, state, stack = project_edges(), {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in edges[node]:
            if state.get(target) == "open":
                raise AssertionError("circle: " + " -> ".join(stack[stack.index(target):] + [target]))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_only_the_ray_executor_and_entry_points_import_ray():
    ray_users = {m for m, path in MODULES.items() if any(n.split(".")[0] == "ray" for n in imports_of(path))}
    allowed = ("orchestrator.engine.ray_", "orchestrator.entry.", "benchmarks")  # the package and its scripts
    assert all(m.startswith(allowed) for m in ray_users), sorted(ray_users)


MACHINE_PATH = re.compile(r"(?<![\w.~])/(?:work|home|root|Users|mnt|opt|srv)/[\w.-]+")


def test_no_file_names_a_path_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    found = []
    for name in tracked:
        path = ROOT / name
        if not path.is_file() or path.suffix in {".png", ".safetensors", ".pt", ".mp4", ".arrow", ".parquet"}:
            continue
        if path.name == "Dockerfile":  # its paths are those of the image it builds
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        found += [f"{name}: {match}" for match in MACHINE_PATH.findall(text)]
    assert found == []

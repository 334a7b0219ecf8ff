"""The package's shape: no import cycle, and the in-process path never loads Ray."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ned_ray"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _packages(target: str, modules: set[str]) -> list[str]:
    """What importing ``target`` runs: the packages above it (their ``__init__``), then itself. The
    top package is left out: every module of it is imported after it has started."""
    parts = target.split(".")
    return [m for m in (".".join(parts[:i]) for i in range(2, len(parts) + 1)) if m in modules] or [target]


def _imports(path: Path, modules: set[str]) -> set[str]:
    """ned_ray modules that ``path`` imports anywhere (module level or in functions), except under
    ``if TYPE_CHECKING:``."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking(node):
            return
        if isinstance(node, ast.Import):
            found.update(m for a in node.names if a.name in modules for m in _packages(a.name, modules))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in modules:
                    found.update(_packages(target, modules))  # `from . import errors`: the submodule
                elif base in modules:
                    found.update(_packages(base, modules))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    return found - ancestors - {name}  # a module's own packages are already being imported when it is


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_no_import_cycle_in_the_package():
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(p) for p in paths}
    graph = {_module_name(p): _imports(p, modules) for p in paths}
    assert graph["ned_ray.job.run"] >= {"ned_ray.job.executors", "ned_ray.job.commit"}  # the parser sees imports
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_local_path_imports_no_ray():
    code = ("import sys\n"
            "import ned_ray, ned_ray.cli, ned_ray.job.run, ned_ray.job.executors.local, ned_ray.job.stages\n"
            "import ned_ray.api, ned_ray.berg, ned_ray.output\n"
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_public_names_load_on_first_use():
    import ned_ray
    from ned_ray.job.options import EncodeConfig
    from ned_ray.job.run import run_encode

    assert ned_ray.EncodeConfig is EncodeConfig and ned_ray.run_encode is run_encode  # README's Python example
    assert set(ned_ray.__all__) >= {"NED", "BERG", "open_output", "EncodeConfig", "run_encode", "plan_encode"}
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        ned_ray.nope  # noqa: B018


def test_selection_rules_options_and_the_output_layout_import_no_torch():
    """The driver checks selections and options before anything heavy loads."""
    code = ("import sys\n"
            "import ned_ray, ned_ray.selection, ned_ray.job.options, ned_ray.output.layout, ned_ray.errors, ned_ray.ids\n"
            "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.slow
def test_a_job_in_process_runs_where_ray_cannot_be_imported(demo_dir, tmp_path):
    """``sys.modules['ray'] = None`` makes every ``import ray`` fail: the whole job, start to summary."""
    from ned_ray.demo import write_demo_images

    write_demo_images(tmp_path / "imgs")
    out = tmp_path / "out"
    code = ("import sys\nsys.modules['ray'] = None\nfrom ned_ray.cli import main\n"
            f"sys.exit(main(['encode', '--ned-dir', {str(demo_dir)!r}, '--images', {str(tmp_path / 'imgs')!r}, "
            f"'--models', 'fmri/nsd/fwrf/sub-01/V1,eeg/things_eeg_2/vit_b_32/sub-01', '--output', {str(out)!r}, "
            "'--device', 'cpu', '--executor', 'local', '--quiet']))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "ran in this process, without Ray" in done.stdout
    assert (out / "_manifest.json").is_file()


def test_the_ray_range_is_the_one_ci_tests():
    """pyproject.toml's Ray range holds the oldest release `make test-ray-oldest` installs (its lower
    bound) and the Ray these tests run on."""
    import re

    import ray
    from packaging.requirements import Requirement
    from packaging.version import Version

    root = Path(__file__).resolve().parents[1]
    (line,) = re.findall(r'"(ray\[[^"]+)"', (root / "pyproject.toml").read_text())
    spec = Requirement(line).specifier
    (oldest,) = re.findall(r"^RAY_OLDEST := (\S+)$", (root / "Makefile").read_text(), re.MULTILINE)
    lower = min(Version(s.version) for s in spec if s.operator == ">=")
    assert oldest in spec and Version(oldest).release[:2] == lower.release[:2], (oldest, str(spec))
    assert ray.__version__ in spec, f"Ray {ray.__version__} is outside pyproject.toml's {spec}"


# Where Ray is imported: the Ray executor, ned_ray.data (Ray Data pipelines), and, inside functions
# that only Ray jobs call, the cluster's description (ClusterShape.from_ray) and the lease's check
# that a Ray job is gone (job/commit/lease.py).
RAY_MODULES = {"ned_ray.job.executors.ray", "ned_ray.data.encode", "ned_ray.data.read", "ned_ray.job.cluster",
               "ned_ray.job.commit.lease"}


def test_ray_is_imported_only_where_it_is_declared():
    importing = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            if any(n == "ray" or n.startswith("ray.") for n in names):
                importing.add(_module_name(path))
    assert importing == RAY_MODULES


def test_the_data_package_loads_ray_and_nothing_else_loads_it_for_it():
    code = ("import sys\nimport ned_ray.output.reader, ned_ray.job.stages\n"
            "assert 'ray' not in sys.modules\nimport ned_ray.data\nprint(sorted(ned_ray.data.__all__))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "encode" in done.stdout and "read_output" in done.stdout


def test_the_torch_range_is_the_one_ci_tests():
    """pyproject.toml's torch and torchvision ranges hold the oldest releases `make test-ray-oldest`
    installs (their lower bounds) and the torch these tests run on."""
    import re

    import torch
    from packaging.requirements import Requirement
    from packaging.version import Version

    root = Path(__file__).resolve().parents[1]
    text, makefile = (root / "pyproject.toml").read_text(), (root / "Makefile").read_text()
    for name, variable, installed in (("torch", "TORCH_OLDEST", torch.__version__), ("torchvision", "TORCHVISION_OLDEST", None)):
        (line,) = re.findall(rf'"({name}[<>=][^"]+)"', text)
        spec = Requirement(line).specifier
        (oldest,) = re.findall(rf"^{variable} := (\S+)$", makefile, re.MULTILINE)
        lower = min(Version(s.version) for s in spec if s.operator == ">=")
        assert oldest in spec and Version(oldest).release[:2] == lower.release[:2], (name, oldest, str(spec))
        if installed:
            assert spec.contains(installed.split("+")[0]), f"{name} {installed} is outside pyproject.toml's {spec}"


def test_input_kinds_are_reached_through_their_registry_only():
    """Outside ned_ray/job/inputs/ no module imports a kind's module or names a kind: the package's
    open_source() asks each registered kind whether it opens an input."""
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(p) for p in paths}
    inputs = "ned_ray.job.inputs"
    for path in paths:
        name = _module_name(path)
        if name == inputs or name.startswith(inputs + "."):
            continue
        imported = {m for m in _imports(path, modules) if m.startswith(inputs + ".")}
        assert not imported, f"{name} imports {sorted(imported)}: use ned_ray.job.inputs"
        text = path.read_text()
        assert ".kind ==" not in text.replace("plot.kind ==", "").replace("coord.dtype.kind ==", ""), name

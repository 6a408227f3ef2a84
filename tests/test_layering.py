"""The package's structure, held by a test: layers only import downward, nothing imports the CLI, no import
cycles (function-local imports included, so none can hide one), and no parameter passed through the
process environment inside the package."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "tuneforge"

CORE = ("tuneforge.data", "tuneforge.models", "tuneforge.train")
ABOVE_CORE = ("tuneforge.recipes", "tuneforge.eval", "tuneforge.serve", "tuneforge.ui", "tuneforge.cli",
              "tuneforge.calibration", "tuneforge.agent", "tuneforge.runs_index")
# The environment variables the package may read, and why each is not a run parameter.
ENV_READS = {
    "cli.py": "the CLI edge: typer reads the switches' variables there and passes values down",
    "models/embedded.py": "TUNEFORGE_HOME: where the converted default model is cached (like HF_HOME)",
    "wheels.py": "a local copy of a wheel instead of a download (offline machines)",
    "models/load.py": "HF_HUB_OFFLINE is only named in an error message",
    "data/cache_build.py": "sets (reads nothing) TOKENIZERS_PARALLELISM off inside the build's worker processes, "
                           "one per core already: tokenizers has no other switch",
    "train/distributed.py": "ACCELERATE_USE_FSDP: accelerate's own launcher setting, hidden from accelerate; "
                            "RANK: the launcher's rank, needed before any process group exists",
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every tuneforge module this file imports, at any depth of the file (functions included)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return {m for m in found if m.startswith("tuneforge")} - {name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {m for m in _imports(path, modules) if m in modules} for name, path in modules.items()}


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_core_never_imports_upward():
    bad = [f"{a} -> {b}" for a, deps in _graph().items() if _under(a, CORE)
           for b in deps if _under(b, ABOVE_CORE)]
    assert not bad, bad


def test_nothing_imports_the_cli():
    bad = [a for a, deps in _graph().items() if "tuneforge.cli" in deps and a != "tuneforge.__main__"]
    assert not bad, bad


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    # A package importing its own submodules (recipes/__init__ -> recipes.sft) is how packages re-export,
    # and a submodule never imports its package back here; anything else is a real cycle.
    assert not cycles, cycles


def test_no_environment_parameters_inside_the_package():
    readers = []
    for path in PKG.rglob("*.py"):
        rel = str(path.relative_to(PKG))
        text = path.read_text()
        if ("os.environ" in text or "os.getenv" in text) and rel not in ENV_READS:
            readers.append(rel)
    assert not readers, f"environment read inside the package (pass it as an argument instead): {readers}"


def test_the_loop_has_no_test_hooks():
    loop = (PKG / "train" / "loop.py").read_text()
    assert "environ" not in loop and "TUNEFORGE_TEST" not in loop
    assert "TUNEFORGE_TEST" not in (PKG / "train" / "checkpoint.py").read_text()

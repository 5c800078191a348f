"""Library code never imports a CLI module: entry points parse argv and call the library, never the
other way round, so what a CLI shares with the library lives in the library (rqscale.sampling's
SampleRequest and its flags for rqscale.sample and rqscale.evaluate, rqscale.planning for rqscale.plan).

Read from the source with `ast`, nothing imported: function-level imports count as much as top-level ones.
"""
import ast
import os

from tests.conftest import REPO

PACKAGE = os.path.join(REPO, "rqscale")
NAMED_CLIS = {"rqscale.sample", "rqscale.evaluate", "rqscale.plan", "rqscale.export"}
# A CLI may import another only to extend that same command line. Each such pair, and why:
CLI_EXTENDS = {
    # `python -m rqscale.train` plus --kill-at: the rest of argv goes to train's main with a step hook.
    ("rqscale.bench.faults", "rqscale.train.__main__"),
}


def module_name(path: str) -> str:
    parts = os.path.relpath(path, REPO)[: -len(".py")].split(os.sep)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    found = {}
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                with open(path) as f:
                    found[module_name(path)] = ast.parse(f.read(), path)
    return found


def runs_as_main(tree: ast.Module) -> bool:
    """A top-level `if __name__ == "__main__":` block: the module is a `python -m` entry point."""
    for node in tree.body:
        test = node.test if isinstance(node, ast.If) else None
        if isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__":
            return True
    return False


def cli_modules(found: dict) -> set[str]:
    return {m for m, tree in found.items() if m in NAMED_CLIS or m.endswith(".__main__") or runs_as_main(tree)}


def imported(module: str, tree: ast.Module, known: set[str]) -> set[str]:
    """Every rqscale module `module` imports, anywhere in it; `from pkg import name` counts pkg.name
    when that is a module, and importlib.import_module("...") with a literal name counts too."""
    package = module if module in known and _is_package(module) else module.rsplit(".", 1)[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(package, node.module, node.level)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif _literal_import_module(node):
            names.add(node.args[0].value)
    return {n for n in names if n in known and n != module}


def _is_package(module: str) -> bool:
    return os.path.isfile(os.path.join(REPO, *module.split("."), "__init__.py"))


def _absolute(package: str, name: str | None, level: int) -> str:
    if level == 0:
        return name
    base = package.rsplit(".", level - 1)[0] if level > 1 else package
    return f"{base}.{name}" if name else base


def _literal_import_module(node) -> bool:
    return (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and bool(node.args) and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str))


def test_the_named_clis_exist():
    """The rule below means nothing if a CLI module moved and the scan no longer sees it."""
    found = modules()
    clis = cli_modules(found)
    assert NAMED_CLIS | {"rqscale.train.__main__", "rqscale.bench.__main__"} <= clis, sorted(clis)
    assert "rqscale.sampling.request" in found and "rqscale.eval.modes" not in clis


def test_library_modules_never_import_a_cli_module():
    found = modules()
    clis, known = cli_modules(found), set(found)
    bad = sorted(f"{m} imports {c}" for m in found if m not in clis for c in imported(m, found[m], known) & clis)
    assert bad == [], "library code imports a CLI module; move what they share into the library:\n" + "\n".join(bad)


def test_clis_import_each_other_only_to_extend_a_command_line():
    found = modules()
    clis, known = cli_modules(found), set(found)
    pairs = {(m, c) for m in clis for c in imported(m, found[m], known) & clis}
    assert pairs - CLI_EXTENDS == set(), f"CLI modules importing each other (share through the library): {sorted(pairs - CLI_EXTENDS)}"


def test_the_scan_sees_every_kind_of_import():
    tree = ast.parse("import rqscale.plan\nfrom rqscale import sample\nfrom ..train.__main__ import main\n"
                     "def f():\n    from rqscale.evaluate import main\n    importlib.import_module('rqscale.export')\n")
    known = {"rqscale.plan", "rqscale.sample", "rqscale.train.__main__", "rqscale.evaluate", "rqscale.export", "rqscale.eval.x"}
    assert imported("rqscale.eval.x", tree, known) == known - {"rqscale.eval.x"}

"""The package's house rules: the layers of pyproject.toml hold (`lint-imports`), nothing imports our own
modules inside a function, every module imports in any order, and each DVC stage depends on exactly the
cftlib files its notebook runs."""

import ast
import re
import subprocess
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "cftlib"


def modules() -> list[str]:
    """Every module of cftlib, dotted."""
    return sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                  for p in PKG.rglob("*.py"))


def module_file(name: str) -> Path:
    p = ROOT / Path(*name.split("."))
    return p / "__init__.py" if p.is_dir() else p.with_suffix(".py")


def imported(tree: ast.AST, package: str) -> set[str]:
    """The cftlib modules a parsed file imports (`package`: the file's package, for relative imports)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "cftlib":
                continue
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names if module_file(f"{base}.{a.name}").is_file()}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "cftlib"}
    return out


def closure(start: set[str]) -> set[str]:
    """`start` and every cftlib module they import, transitively, with the packages on the way."""
    seen, todo = set(), list(start)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        parts = m.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        f = module_file(m)
        pkg = m if f.name == "__init__.py" else m.rpartition(".")[0]
        todo += sorted(imported(ast.parse(f.read_text()), pkg))
    return seen


def runs_code(name: str) -> bool:
    """False for a package `__init__` that holds only its docstring and constants: editing it changes no stage."""
    f = module_file(name)
    body = ast.parse(f.read_text()).body
    return f.name != "__init__.py" or any(not isinstance(n, (ast.Expr, ast.Assign)) for n in body)


def test_lint_imports_keeps_the_layers_and_every_package_is_in_them():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in cfg["contracts"] if c["type"] == "layers")
    named = {m.strip() for layer in layers["layers"] for m in re.split(r"[|:]", layer)}
    top = {p.stem for p in PKG.iterdir() if p.suffix == ".py" and p.stem != "__init__" or (p / "__init__.py").is_file()}
    assert top == named, f"cftlib's packages {sorted(top)} and the layers {sorted(named)} differ"
    lint = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:]


def test_no_cftlib_module_imports_our_own_modules_inside_a_function_and_each_lazy_import_says_why():
    ours, unexplained = [], []
    for f in sorted(PKG.rglob("*.py")):
        text = f.read_text()
        lines = text.split("\n")
        tree = ast.parse(text)
        top = set(map(id, tree.body))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
                where = f"{f.relative_to(ROOT)}:{node.lineno}"
                if (isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("cftlib"))
                        or isinstance(node, ast.Import) and any(a.name.startswith("cftlib") for a in node.names)):
                    ours.append(where)
                elif "#" not in lines[node.end_lineno - 1] and not lines[node.lineno - 2].strip().startswith("#"):
                    unexplained.append(where)
    assert not ours, f"cftlib imported inside a function (move it to the top, or the piece to a lower layer): {ours}"
    assert not unexplained, f"a lazy third-party import without a comment saying why it is lazy: {unexplained}"


@pytest.mark.parametrize("order", ["sorted", "reversed", "stages first"])
def test_every_module_imports_in_any_order(order):
    ms = modules()
    ms = {"sorted": ms, "reversed": ms[::-1],
          "stages first": sorted(ms, key=lambda m: (not m.startswith("cftlib.stages"), m))}[order]
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in ms)
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


def expansions(cmd: str) -> set[str]:
    """`cmd` with each `${key}` replaced by every value the profiles give it."""
    key = re.search(r"\$\{([\w.]+)\}", cmd)
    if not key:
        return {cmd}
    values = set()
    for prof in (ROOT / "profiles").glob("*.yaml"):
        v = yaml.safe_load(prof.read_text())
        for k in key.group(1).split("."):
            v = v[k]
        values.add(str(v))
    return {e for v in values for e in expansions(cmd.replace(key.group(0), v))}


def stage_modules(stage: dict) -> set[str]:
    """The cftlib modules a stage runs under any profile: its command's module, its notebook's imports and the
    modules it launches (`launch.run("cftlib....")`), transitively."""
    cmd = " ".join(expansions(stage["cmd"]))
    start = set(re.findall(r"-m (cftlib[\w.]*)", cmd))
    for nb in sorted(set(re.findall(r"(notebooks/\S+\.ipynb)", cmd))):
        book = nbformat.read(ROOT / nb, as_version=4)
        code = "\n".join(c.source for c in book.cells if c.cell_type == "code")
        start |= imported(ast.parse(code), "")
        start |= set(re.findall(r"launch\.run\(\"(cftlib[\w.]*)\"", code))
    return {m for m in closure(start) if runs_code(m)}


def test_each_stage_depends_on_exactly_the_cftlib_files_it_runs():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    problems = {}
    for name, st in stages.items():
        deps = {d for d in st.get("deps", []) if d.startswith("cftlib/")}
        want = {str(module_file(m).relative_to(ROOT)) for m in stage_modules(st)}
        covered = {w for w in want if any(w == d or w.startswith(d.rstrip("/") + "/") for d in deps)}
        extra = {d for d in deps if not any(w == d or w.startswith(d.rstrip("/") + "/") for w in want)}
        if covered != want or extra:
            problems[name] = {"missing": sorted(want - covered), "not run": sorted(extra)}
    assert not problems, problems

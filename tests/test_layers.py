"""The code's layers (pyproject.toml [tool.importlinter]) hold, with no exception listed, and no
module imports itself back through others (imports inside functions count)."""

import subprocess
import sys
import tomllib

from conftest import ROOT


def test_import_linter_contracts_are_kept_without_exceptions():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert len(cfg["contracts"]) >= 3
    assert not any("ignore_imports" in c or "unmatched_ignore_imports_alerting" in c for c in cfg["contracts"])
    lint = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                                  "sys.argv = ['lint-imports']; lint_imports_command()"]
    proc = subprocess.run(lint, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "BROKEN" not in proc.stdout and proc.stdout.count("KEPT") == len(cfg["contracts"])


def test_no_import_cycle_between_modules():
    import grimp

    graph = grimp.build_graph("countlens", include_external_packages=False)
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    state: dict[str, int] = {}
    cycles = []

    def visit(m, path):
        state[m] = 1
        for n in edges[m]:
            if state.get(n) == 1:
                cycles.append(path[path.index(n):] + [n] if n in path else [m, n])
            elif n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    # a package importing its own submodule is not a cycle unless the submodule imports it back
    assert cycles == []

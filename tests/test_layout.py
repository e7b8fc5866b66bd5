"""The package's shape, as the README's layout promises it: no library module over 700 lines (the Triton
kernel excepted), and every module named in the README's layout table. (The import layering itself is
checked by ``make lint``: import-linter contracts in pyproject.toml.)"""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fast_timesformer"
MAX_LINES = 700


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_no_library_module_over_700_lines():
    long = {str(p.relative_to(ROOT)): n for p in _modules()
            if p.parent.name != "kernels" and (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them along their ideas): {long}"


def test_readme_layout_names_every_module():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Layout"):readme.index("\n## ", readme.index("## Layout") + 1)]
    unnamed = []
    for p in _modules():
        rel = p.relative_to(PACKAGE)
        if p.name == "__init__.py" and len(rel.parts) > 1 and rel.parent.name != "export":
            continue  # a subpackage's __init__ re-exports its modules (export's holds the export itself)
        if p.name not in table:
            unnamed.append(str(rel))
    assert not unnamed, f"modules missing from the README's layout table: {unnamed}"

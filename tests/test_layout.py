"""docs/design.md's layout section names every module of the package, so it cannot silently go stale."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_design_layout_names_every_module():
    text = (ROOT / "docs" / "design.md").read_text()
    layout = text[text.index("## Layout"):text.index("## The fused op")]
    modules = [p for p in (ROOT / "fastmsfd").glob("*.py") if not p.name.startswith("_")]
    modules += [p for p in (ROOT / "fastmsfd").iterdir() if p.is_dir() and (p / "__init__.py").is_file()]
    missing = [p.name for p in modules if (p.name + "/" if p.is_dir() else p.name) not in layout]
    assert not missing, f"docs/design.md layout does not name {missing}"

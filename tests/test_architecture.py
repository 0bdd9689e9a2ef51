"""The package's shape, checked from its source (an AST walk, which a rename cannot dodge as a grep can): one
forward, no module reading another's private attributes, small files."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = sorted((ROOT / "fastmsfd").rglob("*.py"))
# a namedtuple's documented API is spelt with an underscore so as not to clash with its fields
NAMEDTUPLE_API = {"_fields", "_replace", "_asdict", "_make"}


def _private_reads(path: Path, root: Path = ROOT) -> list[str]:
    """`x._name` where x is not self, cls or super(), and `from m import _name` of another module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            own = isinstance(base, ast.Name) and base.id in ("self", "cls")
            own = own or (isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "super")
            if not own and node.attr not in NAMEDTUPLE_API:
                found.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}")
        if isinstance(node, ast.ImportFrom):
            found += [f"{path.relative_to(root)}:{node.lineno}: from {node.module} import {a.name}"
                      for a in node.names if a.name.startswith("_") and not a.name.startswith("__")
                      and a.name not in ("_version", "_C")]
    return found


def test_the_private_access_check_catches_what_it_should(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from .x import _helper\n\ndef f(det):\n    return det._prepare(1), self._ok, super()._apply\n")
    assert [line.split(": ", 1)[1] for line in _private_reads(probe, tmp_path)] == \
        ["from x import _helper", "det._prepare"]


def test_no_module_reads_another_modules_private_attributes():
    found = [line for path in PACKAGE for line in _private_reads(path)]
    assert not found, "private attributes read across modules:\n" + "\n".join(found)


def test_one_forward_one_small_detector():
    """The inference math lives in model.py alone: beside the networks' own layers (backbones/, and the
    synchronised BatchNorm of distributed.py), no class of the package defines a forward but the model and the
    facade that calls it; detector.py stays at most 250 lines and no module runs past 350."""
    forwards = []
    for path in PACKAGE:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(f.name == "forward" for f in node.body
                                                      if isinstance(f, ast.FunctionDef)):
                forwards.append(f"{path.relative_to(ROOT / 'fastmsfd')}:{node.name}")
    layers = {f for f in forwards if f.startswith(("backbones/", "distributed.py:"))}
    assert set(forwards) - layers == {"model.py:MSFDModel", "detector.py:Detector"}
    detector_forward = [n for n in ast.walk(ast.parse((ROOT / "fastmsfd" / "detector.py").read_text()))
                        if isinstance(n, ast.FunctionDef) and n.name == "forward"][0]
    assert "self.model(" in ast.unparse(detector_forward)  # the facade's forward is the model's
    lengths = {p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines()) for p in PACKAGE}
    assert lengths["fastmsfd/detector.py"] <= 250
    long = {p: n for p, n in lengths.items() if n > 350}
    assert not long, f"modules over 350 lines: {long}"


def test_dependencies_point_one_way():
    """kernels/ imports nothing of fastmsfd (the ops package adapts and registers them); experiment scripts share
    one helper module and import no other experiment."""
    for path in sorted((ROOT / "kernels").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            assert not [n for n in names if n.split(".")[0] == "fastmsfd"], f"{path.name} imports {names}"
    experiments = ROOT / "scripts" / "experiments"
    scripts = {p.stem for p in experiments.glob("*.py")}
    for path in sorted(experiments.glob("*.py")):
        text = path.read_text()
        assert "sys.path" not in text, f"{path.name} edits sys.path"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                bad = [n for n in names if n.split(".")[0] in scripts - {"common"}]
                assert not bad, f"{path.name} imports the experiment {bad} (shared code goes in common.py)"

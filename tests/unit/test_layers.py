"""The import rule of the three layers: the engine imports neither serving nor Triton code, serving never imports
Triton code (gptserve.settings, shared by all three, imports only the engine's presets)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "gptserve"
FORBIDDEN = {"engine": {"serving", "triton"}, "serving": {"triton"}, "settings.py": {"serving", "triton"}}


def imported_layers(source: str, package: tuple[str, ...]) -> set[str]:
    """The gptserve subpackages a module of `package` (e.g. ("engine",)) imports, absolutely or relatively."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = [*base, *node.module.split(".")] if node.module else [*base, *(a.name for a in node.names)]
            found.update(target[:1])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gptserve."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("gptserve."))
    return found


def test_no_layer_imports_one_above_it():
    checked = 0
    for layer, forbidden in FORBIDDEN.items():
        for path in [PACKAGE / layer] if layer.endswith(".py") else sorted((PACKAGE / layer).rglob("*.py")):
            package = path.relative_to(PACKAGE).parent.parts
            bad = imported_layers(path.read_text(), package) & forbidden
            assert not bad, f"{path.relative_to(PACKAGE)} imports gptserve.{sorted(bad)[0]}"
            checked += 1
    assert checked >= 15


def test_the_rule_sees_every_form_of_import():
    assert imported_layers("from ..serving.requests import Limits\n", ("engine",)) == {"serving"}
    assert imported_layers("from .. import triton\n", ("serving",)) == {"triton"}
    assert imported_layers("import gptserve.triton.tensors\n", ("engine",)) == {"triton"}
    assert imported_layers("from gptserve.serving import Scheduler\n", ("engine",)) == {"serving"}
    assert imported_layers("from . import checkpoint\nfrom .config import PRESETS\n", ("engine",)) == {"engine"}

"""The architecture stays visible: packages import only downward (STYLE rule 1), and imports have no side effects."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "athena"
# package -> athena packages it may import (errors and cancel are leaf modules that everything may use)
ALLOWED = {
    "models": {"errors", "cancel", "models"},
    "diffusion": {"errors", "cancel", "diffusion"},
    "text": {"errors", "cancel", "text"},
    "media": {"errors", "cancel", "media"},
    "checkpoints": {"errors", "cancel", "models", "checkpoints"},
    "graph": {"errors", "cancel", "graph"},
    "pipelines": {"errors", "cancel", "models", "diffusion", "checkpoints", "text", "media", "pipelines"},
    "training": {"errors", "cancel", "models", "diffusion", "checkpoints", "text", "media", "pipelines", "training"},
    "nodes": {"errors", "cancel", "graph", "pipelines", "nodes", "models", "diffusion", "checkpoints", "text", "media"},
}


def athena_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        found |= {n.split(".")[1] for n in names if n.startswith("athena.") and n.count(".") >= 1}
    return found


def test_imports_point_downward():
    bad = []
    for package, allowed in ALLOWED.items():
        for f in (ROOT / package).glob("**/*.py") if (ROOT / package).is_dir() else []:
            bad += [f"{f.relative_to(ROOT)} imports athena.{m}" for m in athena_imports(f) - allowed]
    assert not bad, bad


def test_import_has_no_side_effects():
    code = ("import sys, torch; import athena, athena.cli, athena.checkpoints.load; "
            "assert not torch.cuda.is_initialized(); print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PATH": "", "ATHENA_MODELS_DIR": "/x"})
    assert r.stdout.strip() == "ok", r.stderr

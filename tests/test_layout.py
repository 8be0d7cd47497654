"""The package's import rule, checked on its source: each layer imports only layers below it, and no
HuBMAP module imports a SenNet one (what the competitions share lives in neutral modules)."""
import ast
from pathlib import Path

import nnunet_vasculature

PACKAGE = Path(nnunet_vasculature.__file__).parent
# bottom to top; a module may import its own layer and the ones below
LAYERS = [
    {"errors", "competitions", "io"},
    {"pretrained", "trainers", "dataset_conversion", "synthetic", "env"},
    {"inference"},
    {"postprocess"},
    {"demo", "export"},
    {"cli"},
]


def _layer(dotted: str) -> int:
    parts = dotted.split(".")
    top = parts[1] if len(parts) > 1 else ""
    if not top or not ((PACKAGE / top).is_dir() or (PACKAGE / f"{top}.py").is_file()):
        return 0                          # the package root or a name it defines (__version__)
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{dotted}: not in any layer of tests/test_layout.py (add its package there)")


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        yield name, path


def _imports(name: str, path: Path):
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:      # `from pkg import module` names a module too
                yield f"{base}.{alias.name}"
                yield base


def test_layers_import_only_downwards():
    bad = []
    for name, path in _modules():
        if name == "nnunet_vasculature" or name.startswith("nnunet_vasculature.trainers.ext"):
            continue                      # the package root re-exports; ext is nnU-Net's entry module
        own = _layer(name)
        for target in _imports(name, path):
            if target.startswith("nnunet_vasculature.") and _layer(target) > own:
                bad.append(f"{name} -> {target}")
    assert not bad, "upward imports:\n" + "\n".join(sorted(set(bad)))


# SenNet's own modules besides those named sennet: the SenNet `predict` command
SENNET_ONLY = {"nnunet_vasculature.inference.predict"}


def _is_sennet(target: str) -> bool:
    return target.startswith("nnunet_vasculature.") and (
        "sennet" in target.split(".") or any(target == m or target.startswith(m + ".") for m in SENNET_ONLY))


def test_no_hubmap_module_imports_a_sennet_module():
    bad = []
    for name, path in _modules():
        if "hubmap" in name.rpartition(".")[2]:
            bad += [f"{name} -> {t}" for t in _imports(name, path) if _is_sennet(t)]
    assert not bad, "HuBMAP modules importing SenNet ones:\n" + "\n".join(sorted(set(bad)))


def test_the_checker_sees_imports_inside_functions():
    """The rule must not be blind to the function-level imports the CLI modules use."""
    src = PACKAGE / "demo" / "hubmap_kidney.py"
    assert any(t.startswith("nnunet_vasculature.synthetic") for t in _imports("nnunet_vasculature.demo.hubmap_kidney",
                                                                                src))

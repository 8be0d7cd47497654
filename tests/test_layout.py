"""The package's import rule, checked on its source (function-level imports included): each layer imports
only layers below it, no module imports itself back through others (no import circle), and no module of one
competition imports a module of another (what the competitions share lives in neutral modules)."""
import ast
import importlib
import inspect
from pathlib import Path

import nnunet_vasculature
from nnunet_vasculature import competitions

PACKAGE = Path(nnunet_vasculature.__file__).parent
# bottom to top; a module may import its own layer and the ones below
LAYERS = [
    {"errors", "competitions", "io"},
    {"metrics"},
    {"pretrained", "trainers", "dataset_conversion", "synthetic", "env"},
    {"inference"},
    {"postprocess"},
    {"demo", "export", "view"},
    {"cli"},
]


def _layer(dotted: str) -> int:
    parts = dotted.split(".")
    if parts[-1] == "__main__":
        return len(LAYERS) - 1            # an entry point (python -m ...) sits with the console script
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


def _graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports (a name imported from a module counts as that module; the
    packages a module lies in are left out: Python imports them first anyway)."""
    modules = dict(_modules())
    graph = {}
    for name, path in modules.items():
        targets = set()
        for target in _imports(name, path):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                targets.add(target)
        graph[name] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One import circle per strongly connected group of ``graph`` (Tarjan), each as a path a -> ... -> a."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_circle(graph, group) for group in groups]


def _circle(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A path from the group's first module back to itself inside the group (breadth first)."""
    start = min(group)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph[node] & group):
            if nxt == start:
                return paths[node] + [start]
            if nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                queue.append(nxt)
    raise AssertionError(f"{sorted(group)}: not a circle")


def test_no_import_circle():
    circles = _cycles(_graph())
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_the_circle_search_finds_a_circle_through_a_function_level_import(tmp_path):
    """The search must see the circle of issue 32 (io.sources -> io.volume_open inside a function ->
    io.hoa -> io.pyramid -> io.sources), built here as a graph; an acyclic graph gives none."""
    module = tmp_path / "sources.py"
    module.write_text("def open_inputs():\n    from nnunet_vasculature.io.volume_open import open_volume\n")
    assert "nnunet_vasculature.io.volume_open" in set(_imports("nnunet_vasculature.io.sources", module))
    graph = {"sources": {"volume_open"}, "volume_open": {"pyramid", "hoa"}, "hoa": {"pyramid"},
             "pyramid": {"sources", "sennet"}, "sennet": set()}
    assert _cycles(graph) == [["hoa", "pyramid", "sources", "volume_open", "hoa"]]
    graph["pyramid"] = {"sennet"}
    assert _cycles(graph) == []


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_input_stack_layers():
    """The input wing of io/ (issue 32), bottom to top: the contract imports no reader; the multiscale
    readers import neither the SenNet side (Kaggle slice ids, voxel sizes) nor the opener; the SenNet readers
    not the opener; the retired modules of the circle (io.sources, io.volume_open) are imported by nothing."""
    graph = _graph()
    io = "nnunet_vasculature.io."
    top, sennet = {io + "input_spec"}, {io + "sennet", io + "sennet_inputs"}
    kept = {io + "sources", io + "volume_open"}
    readers = {io + m for m in ("pyramid", "omezarr", "n5", "jp2", "hoa")}
    rules = {io + "volume_source": readers | sennet | top | kept, **{r: sennet | top | kept for r in readers},
             io + "sennet_inputs": readers | top | kept}
    bad = [f"{module} reaches {target}" for module, banned in rules.items() if module in graph
           for target in sorted(_reach(graph, module) & banned)]
    bad += [f"{name} -> {target}" for name in graph if name.startswith(io) and name not in kept
            for target in graph[name] & kept]
    assert not bad, "the input stack imports upwards:\n" + "\n".join(bad)
    assert set(rules) | top <= set(graph), "a module of the input stack was renamed: update this test"


# a competition's own modules, found by walking the package (a new module is covered without listing it):
# - its name says so: a part ``sennet``, ``sennet_*``, ``hubmap_kidney``, ``hubmap_kidney_*``, ...;
# - it registers a parser under the competition's word (``groups[...].add_parser(SENNET, ...)``) or declares
#   ``COMPETITION = <word>``;
# - it is outside io/ and reads a competition's layout module of io/ (``io.sennet``, ...).
COMPETITION_NAMES = {word: word.replace("-", "_") for word in competitions.COMPETITIONS}


def _named(dotted: str) -> set[str]:
    parts = dotted.split(".")[1:]
    return {word for word, stem in COMPETITION_NAMES.items()
            for part in parts if part == stem or part.startswith(stem + "_")}


def _declared(path: Path) -> set[str]:
    """Competition words a module registers a parser under or declares as ``COMPETITION``."""
    tree = ast.parse(path.read_text())
    constants = {name: getattr(competitions, name) for name in dir(competitions)
                 if getattr(competitions, name) in competitions.COMPETITIONS}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name) and isinstance(node.value.value, str):
            constants[node.targets[0].id] = node.value.value

    def word(arg):
        if isinstance(arg, ast.Constant):
            return arg.value
        return constants.get(arg.id) if isinstance(arg, ast.Name) else None

    words = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_parser" \
                and node.args:
            words.add(word(node.args[0]))
    if "COMPETITION" in constants:
        words.add(constants["COMPETITION"])
    return words & set(competitions.COMPETITIONS)


def _competitions_of_modules() -> dict[str, set[str]]:
    modules = dict(_modules())
    graph = _graph()
    own = {name: _named(name) | _declared(path) for name, path in modules.items()}
    for name in modules:
        if not name.startswith("nnunet_vasculature.io."):
            for target in graph[name]:
                if target.startswith("nnunet_vasculature.io."):
                    own[name] |= _named(target)
    return own


def _crossings(own: dict[str, set[str]], graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{name} ({', '.join(sorted(own[name]))}) -> {target} ({', '.join(sorted(own[target]))})"
                  for name in graph if own[name] for target in graph[name] if own[target] - own[name])


def test_no_competition_module_imports_another_competitions_module():
    bad = _crossings(_competitions_of_modules(), _graph())
    assert not bad, "modules importing another competition's modules:\n" + "\n".join(bad)


def test_the_competition_check_sees_modules_not_named_for_their_competition():
    """The modules the first version of this check could not see (issue 32) are found by walking."""
    own = _competitions_of_modules()
    for name, word in [("postprocess.sennet_tune", competitions.SENNET),
                       ("postprocess.sennet_metrics", competitions.SENNET),
                       ("inference.stitch", competitions.SENNET),
                       ("inference.predict", competitions.SENNET),
                       ("inference.slide", competitions.HUBMAP_KIDNEY)]:
        assert own[f"nnunet_vasculature.{name}"] == {word}, name
    assert not own["nnunet_vasculature.postprocess.tune"] and not own["nnunet_vasculature.io.pyramid"]


def test_the_checker_sees_imports_inside_functions():
    """The rule must not be blind to the function-level imports the CLI modules use."""
    src = PACKAGE / "demo" / "hubmap_kidney.py"
    assert any(t.startswith("nnunet_vasculature.synthetic") for t in _imports("nnunet_vasculature.demo.hubmap_kidney",
                                                                                src))


def _metric_classes():
    """Classes defined in metrics/ that look like accumulators: named ``*Accumulator`` or with ``add``/``score``."""
    for name, path in _modules():
        if name.startswith("nnunet_vasculature.metrics.") and name != "nnunet_vasculature.metrics.base":
            module = importlib.import_module(name)
            for cls in vars(module).values():
                if inspect.isclass(cls) and cls.__module__ == name and (
                        cls.__name__.endswith("Accumulator") or hasattr(cls, "add") or hasattr(cls, "score")):
                    yield cls


def test_every_accumulator_of_the_metrics_layer_follows_one_protocol():
    """metrics/ (issue 32): each accumulator is fed with ``add(...)`` and answers ``score()`` with no argument;
    a class with ``add`` that is no accumulator would read as one, so it must not use the name."""
    from nnunet_vasculature.metrics.base import Accumulator
    from nnunet_vasculature.postprocess.sennet_metrics import ObjectiveScorer  # the hosts' objectives, per kidney

    classes = [*_metric_classes(), ObjectiveScorer]
    assert {"SurfaceDiceAccumulator", "ToleranceOneAccumulator", "APAccumulator"} <= {c.__name__ for c in classes}
    bad = []
    for cls in classes:
        if not issubclass(cls, Accumulator):
            bad.append(f"{cls.__module__}.{cls.__name__}: no add/score")
        elif any(p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                 for p in list(inspect.signature(cls.score).parameters.values())[1:]):
            bad.append(f"{cls.__module__}.{cls.__name__}: score() needs an argument")
    assert not bad, "not the Accumulator protocol:\n" + "\n".join(bad)

"""The package's shape: layers that only point down, small modules, no private names across modules.

These read the source (``ast``), so they run without torch or modal. Imports
inside functions count; imports under ``if TYPE_CHECKING:`` do not (they never
run). ``colbert_modal/__init__.py`` re-exports lazily by module name, which a
reader of the AST cannot see: that is the one sanctioned upward reference.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "colbert_modal"

#: Bottom first. A module may import only modules of a lower layer.
LAYERS: list[list[str]] = [
    ["errors"],
    ["display", "progress", "dispatch", "runners", "paths"],  # pure: how hits look, progress, .local/.remote, the
    # Runner protocol, per-user directories
    ["ocr"],  # OCR of scanned pages: which pages, the engine (lazily), the cache, remote jobs
    ["view"],  # page images (pypdfium2, lazily) and opening files
    ["records", "colbert_modal"],  # the package __init__ imports errors eagerly, the rest lazily
    ["hub", "names", "models"],  # model names to checkpoints; index and generation names; models: records' old name
    ["files", "integrity", "keyword"],  # reading input files safely; checksums, the top manifest's checks, storage
    # errors; keyword: the BM25 index of a generation (SQLite FTS5)
    # engine.extensions: colbert-ai's C++ extension compiles, the stale-lock guard (torch only, no colbert-ai)
    ["loaders", "chunking", "store", "filters", "engine.extensions"],
    # engine/: the only importer of ragatouille / colbert-ai (through _upstream)
    ["engine._upstream"],
    ["engine.precision", "engine.clustering"],
    ["engine.query_encoder"],  # the lean query encoder: torch, tokenizers, safetensors only
    ["engine.encoder"],
    ["engine.exact", "engine.plaid"],
    ["engine", "loadpool"],  # loadpool: loading and chunking big folders in loader processes
    ["pipeline", "search"],
    ["updates", "texts"],  # apply a plan where the index lives: encode, build, seal; plan text records
    ["reranking"],  # score a given list of texts with a model (rerank), no index
    ["sharding"],  # sharded indexes: split plans, build shards, publish one top generation, merge hits
    ["runners.local"],  # the indexer's local runner: this process
    # names shared by both halves; credentials, probe, error mapping; the write lease; Modal's image-build log
    ["remote", "remote.connection", "remote.leases", "remote.build_log"],
    ["remote.server", "remote.volumes"],  # the container half (never imports modal); pull/push and Volume files
    ["modal_app"],  # the only module importing modal at top level
    ["remote.transports"],  # how a session reaches the app: ephemeral run, deployed app, in-process
    ["remote.client"],
    ["runners.remote"],  # the indexer's remote runner: plans here, applies through the session
    ["indexer"],
    ["adapters"],  # RAG framework adapters (optional extras): hits as the frameworks keep them
    ["adapters.langchain", "adapters.llama_index"],  # LangChain retriever and reranker; LlamaIndex retriever
    ["http"],  # the HTTP API (Starlette app, uvicorn): local indexes searched over JSON
    ["modal_web"],  # the HTTP API as a web endpoint of the Modal app (searches through the Searcher)
    ["doctor"],  # first-run checks: drives the indexer and the remote client
    ["cli_options"],  # the CLI's option parsers (--password, --where, --meta)
    ["cli", "testing"],
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
MAX_LINES = 600
LONG_OK = {"cli"}  # the click CLI may stay one file


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or "colbert_modal"


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id.lstrip("_") == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node, minus the bodies of ``if TYPE_CHECKING:`` blocks."""
    out: list[ast.AST] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        out.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
                continue
            stack.append(child)
    return out


def _package_of(name: str) -> list[str]:
    path = MODULES[name]
    parts = [] if name == "colbert_modal" else name.split(".")
    return parts if path.name == "__init__.py" else parts[:-1]


def _internal(dotted: str) -> str | None:
    """``colbert_modal.x.y`` -> ``x.y`` (or the longest known prefix); None if not ours."""
    parts = dotted.split(".")
    if parts[0] != "colbert_modal":
        return None
    parts = parts[1:]
    while parts:
        name = ".".join(parts)
        if name in MODULES:
            return name
        parts = parts[:-1]
    return "colbert_modal"


def imports_of(name: str) -> set[str]:
    """The colbert_modal modules that module ``name`` imports at run time."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _internal(alias.name)
                if target:
                    found.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(name)[: len(_package_of(name)) - (node.level - 1)]
                dotted = ".".join(["colbert_modal", *base, *(node.module.split(".") if node.module else [])])
            else:
                dotted = node.module or ""
            target = _internal(dotted)
            if target is None:
                continue
            for alias in node.names:  # `from . import remote` names a module
                sub = f"{target}.{alias.name}" if target != "colbert_modal" else alias.name
                found.add(sub if sub in MODULES else target)
    found.discard(name)
    return found


def test_every_module_has_a_layer() -> None:
    assert sorted(set(MODULES) - set(RANK)) == [], "add new modules to LAYERS"
    assert sorted(set(RANK) - set(MODULES)) == [], "LAYERS names a module that does not exist"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name: str) -> None:
    upward = sorted(t for t in imports_of(name) if RANK[t] >= RANK[name])
    assert upward == [], f"{name} (layer {RANK[name]}) imports {upward} from its own or a higher layer"


def test_no_import_cycle() -> None:
    graph = {name: imports_of(name) for name in MODULES}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path, node, nxt]))
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size_and_docstring(name: str) -> None:
    text = MODULES[name].read_text(encoding="utf-8")
    if name not in LONG_OK:
        assert len(text.splitlines()) <= MAX_LINES, f"{name} has grown past {MAX_LINES} lines: split it"
    doc = ast.get_docstring(ast.parse(text))
    assert doc and doc.splitlines()[0].strip(), f"{name} needs a docstring whose first line says what it holds"


def test_only_engine_imports_the_upstream_engine_and_only_modal_app_imports_modal_at_top() -> None:
    heavy = ("ragatouille", "colbert")
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in _runtime_nodes(tree):
            roots = []
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                roots = [node.module.split(".")[0]]
            if any(r in heavy for r in roots):
                assert name.startswith("engine."), f"{name} imports ragatouille/colbert-ai"
        for node in tree.body:  # top level only
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if any(m == "modal" or m.startswith("modal.") for m in mods):
                    assert name in ("modal_app", "modal_web"), f"{name} imports modal at top level"
    server = ast.parse(MODULES["remote.server"].read_text(encoding="utf-8"))
    for node in ast.walk(server):
        if isinstance(node, ast.Import):
            assert not any(a.name.split(".")[0] == "modal" for a in node.names), "remote.server imports modal"
        if isinstance(node, ast.ImportFrom) and not node.level:
            assert (node.module or "").split(".")[0] != "modal", "remote.server imports modal"


# --- private names ---------------------------------------------------------------


def _private(attr: str) -> bool:
    return attr.startswith("_") and not (attr.startswith("__") and attr.endswith("__"))


def _private_uses(path: Path, own: str | None) -> list[str]:
    """``from colbert_modal.x import _y`` and ``x._y`` (x a colbert_modal module) in one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    aliases: dict[str, str] = {}
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level and own is not None:
                base = _package_of(own)[: len(_package_of(own)) - (node.level - 1)]
                dotted = ".".join(["colbert_modal", *base, *(node.module.split(".") if node.module else [])])
            else:
                dotted = node.module or ""
            target = _internal(dotted)
            if target is None or target == own:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}" if target != "colbert_modal" else alias.name
                if sub in MODULES:
                    aliases[alias.asname or alias.name] = sub
                elif _private(alias.name) and _private_module(target) is None:
                    found.append(f"{path.name}:{node.lineno} imports {alias.name} from {target}")
                if _private_module(sub if sub in MODULES else target) and sub != own:
                    found.append(f"{path.name}:{node.lineno} imports the private module {sub}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                target = _internal(alias.name)
                if target and alias.asname:
                    aliases[alias.asname] = target
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _private(node.attr):
            target = aliases.get(node.value.id)
            if target is not None and target != own:
                found.append(f"{path.name}:{node.lineno} uses {target}.{node.attr}")
    return found


def _private_module(name: str) -> str | None:
    return next((p for p in name.split(".") if _private(p)), None)


def test_no_private_name_crosses_a_module_boundary() -> None:
    problems: list[str] = []
    for name, path in MODULES.items():
        # engine/_upstream is private to the engine package: its siblings may use it
        for problem in _private_uses(path, name):
            if name.startswith("engine") and "engine._upstream" in problem and "imports the private module" in problem:
                continue
            problems.append(problem)
    for folder in ("bench", "examples"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            problems.extend(_private_uses(path, None))
    assert problems == []

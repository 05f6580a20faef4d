"""Every ```python block of README.md and docs/*.md, run as a reader would run it (helper-334).

A block runs as written, on the CPU, in a fresh namespace and a temporary working directory, with warnings as
errors and the `auto` backend: it must not raise. A block that cannot run here (it needs a GPU, a download, a
dataset, or it lists signatures over the reader's own tensors) says so on its first line,
`# doc-example: not run (why)`; it is then compiled, and each name it takes from masksub_kernels (`mk.` is the
docs' alias) must exist and each call of one must fit its signature (argument count, keyword names, keyword-only
options). Nothing is skipped silently: a block without the marker that fails is a failure.
"""

import ast
import importlib
import inspect
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import masksub_kernels as mk

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"# doc-example: not run \((?P<why>.+)\)")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<ticks>```+|~~~+)\s*(?P<lang>[^\s`]*)")


@dataclass(frozen=True)
class Block:
    file: str  # relative to the repository root
    index: int  # the n-th ```python block of that file
    line: int  # the line of its first code line in the file (1-based)
    heading: str  # the heading above it
    code: str

    @property
    def id(self):
        slug = re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-")[:40]
        return f"{self.file}-{self.index}-{slug}"


def fenced_blocks(path):
    """(language, first line, heading, code) of every fenced block of a Markdown file, indented ones included."""
    lines, heading, found, i = path.read_text().splitlines(), "", [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            if lines[i].startswith("#"):
                heading = lines[i].lstrip("#").strip()
            i += 1
            continue
        indent, ticks, body = opening["indent"], opening["ticks"], []
        i += 1
        while i < len(lines) and not re.match(rf"^\s*{ticks[0]}{{{len(ticks)},}}\s*$", lines[i]):
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        found.append((opening["lang"], i - len(body) + 1, heading, "\n".join(body) + "\n"))
        i += 1  # the closing fence
    return found


def doc_blocks():
    blocks = []
    for path in DOC_FILES:
        python = [(line, heading, code) for lang, line, heading, code in fenced_blocks(path) if lang == "python"]
        name = path.relative_to(ROOT).as_posix()
        blocks += [Block(name, i, line, heading, code) for i, (line, heading, code) in enumerate(python)]
    return blocks


BLOCKS = doc_blocks()


def _trained(namespace):
    # the two training examples end with one train_step: it stepped, and its loss is finite
    assert namespace["out"]["stepped"] and torch.isfinite(namespace["out"]["loss"])


# what a run block must leave behind, beyond not raising (by file and heading: an index moves with the docs)
POSTCONDITIONS = {("README.md", "Training"): _trained, ("README.md", "BERT: masked-language models"): _trained}


def test_the_docs_blocks_are_found():
    assert len({block.file for block in BLOCKS}) >= 2 and len(BLOCKS) >= 10
    for file, heading in POSTCONDITIONS:  # a renamed heading must not drop its checks silently
        assert any(block.file == file and block.heading == heading for block in BLOCKS), (file, heading)
    others = [
        (path.name, line, lang)
        for path in DOC_FILES
        for lang, line, _, _ in fenced_blocks(path)
        if lang.lower() in {"py", "python3", "pycon", "ipython", "py3"}
    ]
    assert not others, f"Python blocks fenced other than ```python are neither run nor checked here: {others}"


class _Instance:
    """A name bound to `SomeClass(...)` of the package: its methods' signatures are the class's."""

    def __init__(self, cls):
        self.cls = cls


@dataclass(frozen=True)
class _Method:
    """A method of an _Instance, called with `self` first unless it is a static or class method."""

    function: object
    takes_self: bool


def _method(cls, name):
    found = getattr(cls, name)
    return _Method(found, inspect.isfunction(found) and not isinstance(inspect.getattr_static(cls, name), staticmethod))


def _resolve(node, scope):
    """The package object an expression names (an _Instance, a _Method), None where it is not the package's (the
    reader's tensors, what an instance sets on itself), or a str saying which name does not exist."""
    if isinstance(node, ast.Name):
        return scope.get(node.id)
    if not isinstance(node, ast.Attribute):
        return None
    base = _resolve(node.value, scope)
    if base is None or isinstance(base, str | _Method):
        return None if isinstance(base, _Method) else base
    if isinstance(base, _Instance):  # an attribute its __init__ sets cannot be looked up here
        return _method(base.cls, node.attr) if hasattr(base.cls, node.attr) else None
    if hasattr(base, node.attr):
        return getattr(base, node.attr)
    if inspect.ismodule(base):
        try:
            return importlib.import_module(f"{base.__name__}.{node.attr}")
        except ImportError:
            pass
    return f"{ast.unparse(node)}: {getattr(base, '__name__', base)!s} has no attribute {node.attr!r}"


def _signature_of(target):
    """(signature, leading placeholders) to bind a call of `target` to, or None where none can be read."""
    if isinstance(target, _Instance):  # calling an instance: a module's forward, else __call__
        name = "forward" if issubclass(target.cls, torch.nn.Module) else "__call__"
        if not hasattr(target.cls, name):
            return None
        target = _method(target.cls, name)
    function = target.function if isinstance(target, _Method) else target
    if inspect.ismodule(function) or not callable(function):
        return None
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return None
    return signature, (None,) if isinstance(target, _Method) and target.takes_self else ()


def check_marked_block(block):
    """The names a block that is not run takes from the package, and its calls of them against their signatures."""
    tree = ast.parse(block.code, block.file)
    scope, problems = {"mk": mk}, []
    for node in tree.body:  # imports and `name = PackageClass(...)`, in order
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "masksub_kernels":
                    module = importlib.import_module(alias.name)
                    scope[alias.asname or "masksub_kernels"] = module if alias.asname else mk
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "masksub_kernels":
            module = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(module, alias.name):
                    problems.append(f"from {node.module} import {alias.name}: no such name")
                scope[alias.asname or alias.name] = getattr(module, alias.name, None)
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.value, ast.Call):
            cls = _resolve(node.value.func, scope)
            if inspect.isclass(cls) and isinstance(node.targets[0], ast.Name):
                scope[node.targets[0].id] = _Instance(cls)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            found = _resolve(node, scope)
            if isinstance(found, str):
                problems.append(f"line {block.line + node.lineno - 1}: {found}")
        if not isinstance(node, ast.Call):
            continue
        target = _resolve(node.func, scope)
        if target is None or isinstance(target, str):
            continue
        read = _signature_of(target)
        if (
            read is None
            or any(isinstance(a, ast.Starred) for a in node.args)
            or any(k.arg is None for k in node.keywords)
        ):
            continue
        signature, leading = read
        try:
            signature.bind(*leading, *node.args, **{k.arg: k.value for k in node.keywords})
        except TypeError as e:
            problems.append(f"line {block.line + node.lineno - 1}: {ast.unparse(node.func)}{signature}: {e}")
    return problems


@pytest.fixture
def reader_setup(tmp_path, monkeypatch):
    """A temporary working directory, the `auto` backend and the global RNG as a reader's session has them; the
    backend setting and the RNG restored afterwards."""
    monkeypatch.chdir(tmp_path)
    backend = mk.get_backend()
    with torch.random.fork_rng(devices=[]):
        mk.set_backend("auto")
        try:
            yield
        finally:
            mk.set_backend(backend)


@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_doc_example(block, reader_setup):
    # compiled with the Markdown file's own path and line numbers: a traceback shows the line in the file
    code = compile("\n" * (block.line - 1) + block.code, str(ROOT / block.file), "exec")
    first = (block.code.strip().splitlines() or [""])[0].strip()
    if first.startswith("# doc-example"):
        assert MARKER.fullmatch(first), f"{block.file}:{block.line}: the marker reads `# doc-example: not run (why)`"
        problems = check_marked_block(block)
        assert not problems, f"{block.file}:{block.line} ({block.heading}):\n" + "\n".join(problems)
        return
    assert "doc-example" not in block.code, f"{block.file}:{block.line}: the marker belongs on the block's first line"
    namespace = {"__name__": "__main__"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. autocast disabling itself ("CUDA is not available") is a UserWarning
        exec(code, namespace)
    check = POSTCONDITIONS.get((block.file, block.heading))
    if check is not None:
        check(namespace)

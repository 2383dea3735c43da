"""A small mutation tester: simple mutants of a package's modules, one at a time, against its tests.

    python tests/augmentation/mutants.py nnunet_ctorg/augmentation/parameters.py ... \\
        --tests tests/augmentation --report /tmp/mutants.json [-- PYTEST_ARGS]

Mutants (one per line of the report): numbers (ints ±1; floats x2 and /2, 0 -> 0.5), comparisons (< <=, > >=,
== !=, in / not in, is / is not), and/or, arithmetic (+ -, * /, // /, ** *, & |), unary not/-/~ dropped,
True/False, strings (XX..XX; docstrings, f-strings and error messages left alone), min/max, amin/amax,
floor/ceil, any/all swapped, and dropped statements (calls, augmented and re-assignments, raise). Lines
after ``# mutants: skip-start`` up to ``# mutants: skip-end``, and ``--exclude`` line ranges, are left alone.

Nothing is written to the working tree: the process imports the heavy dependencies once, then forks a
child per mutant that imports the mutated module from memory (an import hook) and runs pytest on the
tests that executed the mutated line in a baseline run (all tests for module and class level code and
signature defaults). A failing run, an error or a timeout kills the mutant.
"""

import argparse
import ast
import copy
import importlib.abc
import importlib.util
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRELOAD = ("numpy", "scipy.ndimage", "torch", "torch.nn.functional", "SimpleITK", "matplotlib", "pandas",
           "batchgeneratorsv2.transforms.spatial.spatial", "batchgeneratorsv2.transforms.intensity.contrast",
           "batchgeneratorsv2.transforms.intensity.gamma", "batchgeneratorsv2.transforms.noise.gaussian_blur",
           "nnunetv2.training.nnUNetTrainer.nnUNetTrainer", "pytest")
SWAPS = {"min": "max", "max": "min", "amin": "amax", "amax": "amin", "floor": "ceil", "ceil": "floor",
         "any": "all", "all": "any"}
COMPARE = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
           ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
BINARY = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
          ast.Pow: ast.Mult, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd, ast.Mod: ast.FloorDiv,
          ast.RShift: ast.LShift, ast.LShift: ast.RShift}


@dataclass
class Mutant:
    path: str
    index: int  # position of the node in the module's ast.walk order
    variant: int
    line: int
    description: str
    scope: str  # "body": run the tests that executed ``lines``; "all": every test
    lines: list[int] = field(default_factory=list)
    status: str = ""
    seconds: float = 0.0


def _skipped_lines(source: str) -> set[int]:
    skipped, inside = set(), False
    for number, text in enumerate(source.splitlines(), start=1):
        if "# mutants: skip-start" in text:
            inside = True
        if inside:
            skipped.add(number)
        if "# mutants: skip-end" in text:
            inside = False
    return skipped


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _is_docstring(node: ast.AST, parents: dict) -> bool:
    expr = parents.get(node)
    owner = parents.get(expr)
    return (isinstance(expr, ast.Expr) and isinstance(owner, (ast.Module, ast.ClassDef, ast.FunctionDef))
            and owner.body[0] is expr)


def _inside(node: ast.AST, parents: dict, kinds: tuple) -> ast.AST | None:
    while node in parents:
        node = parents[node]
        if isinstance(node, kinds):
            return node
    return None


def _in_annotation(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        parent = parents[node]
        if (isinstance(parent, ast.arg) and node is parent.annotation) or (
                isinstance(parent, (ast.FunctionDef, ast.AnnAssign)) and node is getattr(parent, "returns", None)
                or isinstance(parent, ast.AnnAssign) and node is parent.annotation):
            return True
        node = parent
    return False


def _assigned_before(node: ast.Assign, parents: dict) -> bool:
    """A re-assignment of plain names already bound earlier in the same function (dropping it is not a NameError)."""
    function = _inside(node, parents, (ast.FunctionDef,))
    names = {t.id for t in node.targets if isinstance(t, ast.Name)}
    if function is None or len(names) != len(node.targets):
        return False
    earlier = {n.id for n in ast.walk(function) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
               and n.lineno < node.lineno}
    earlier |= {a.arg for a in function.args.args + function.args.kwonlyargs}
    return names <= earlier


def _variants(node: ast.AST, parents: dict) -> list[tuple[str, Callable[[ast.AST], ast.AST | None]]]:
    """(description, mutate) pairs for one node; mutate changes a copy of the node in place or returns a new one."""
    out = []
    if isinstance(node, ast.Constant) and not _inside(node, parents, (ast.JoinedStr,)):
        value = node.value
        if isinstance(value, bool):
            out.append((f"{value} -> {not value}", lambda n: setattr(n, "value", not n.value)))
        elif isinstance(value, int):
            out.append((f"{value} -> {value + 1}", lambda n: setattr(n, "value", n.value + 1)))
            out.append((f"{value} -> {value - 1}", lambda n: setattr(n, "value", n.value - 1)))
        elif isinstance(value, float):
            if value == 0:
                out.append(("0.0 -> 0.5", lambda n: setattr(n, "value", 0.5)))
            else:
                out.append((f"{value} -> {value * 2}", lambda n: setattr(n, "value", n.value * 2)))
                out.append((f"{value} -> {value / 2}", lambda n: setattr(n, "value", n.value / 2)))
        elif isinstance(value, str) and not _is_docstring(node, parents) and not _inside(node, parents, (ast.Raise,)):
            out.append((f"{value!r} -> 'XX{value}XX'", lambda n: setattr(n, "value", f"XX{n.value}XX")))
    elif isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in COMPARE:
                new = COMPARE[type(op)]
                out.append((f"{type(op).__name__} -> {new.__name__}",
                            lambda n, i=i, new=new: n.ops.__setitem__(i, new())))
    elif isinstance(node, ast.BoolOp):
        new = ast.Or if isinstance(node.op, ast.And) else ast.And
        out.append((f"{type(node.op).__name__} -> {new.__name__}", lambda n, new=new: setattr(n, "op", new())))
    elif isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in BINARY:
        new = BINARY[type(node.op)]
        out.append((f"{type(node.op).__name__} -> {new.__name__}", lambda n, new=new: setattr(n, "op", new())))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub, ast.Invert)):
        out.append((f"drop {type(node.op).__name__}", lambda n: n.operand))
    elif isinstance(node, ast.Name) and node.id in SWAPS and isinstance(node.ctx, ast.Load):
        out.append((f"{node.id} -> {SWAPS[node.id]}", lambda n: setattr(n, "id", SWAPS[n.id])))
    elif isinstance(node, ast.Attribute) and node.attr in SWAPS:
        out.append((f".{node.attr} -> .{SWAPS[node.attr]}", lambda n: setattr(n, "attr", SWAPS[n.attr])))
    if isinstance(node, ast.stmt) and not isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Import,
                                                             ast.ImportFrom)):
        droppable = (isinstance(node, (ast.AugAssign, ast.Raise))
                     or (isinstance(node, ast.Expr) and not isinstance(node.value, ast.Constant))
                     or (isinstance(node, ast.Assign) and (
                         any(isinstance(t, (ast.Attribute, ast.Subscript)) for t in node.targets)
                         or _assigned_before(node, parents))))
        if droppable:
            out.append(("drop statement", lambda n: ast.Pass(lineno=n.lineno, col_offset=n.col_offset)))
    return out


def _scope(node: ast.AST, parents: dict) -> tuple[str, list[int]]:
    """Which tests can see the mutant: those that executed its lines, or all (import-time code)."""
    function = _inside(node, parents, (ast.FunctionDef, ast.Lambda))
    if function is None:
        return "all", []
    owner = node
    while parents.get(owner) is not function:
        owner = parents[owner]
    if isinstance(function, ast.FunctionDef) and owner is function.args:  # a default: seen when called
        first = min([function.lineno] + [d.lineno for d in function.decorator_list])
        return "body", [first]
    return "body", list(range(node.lineno, getattr(node, "end_lineno", node.lineno) + 1))


def enumerate_mutants(path: str, excluded: set[int] = frozenset()) -> list[Mutant]:
    source = (REPO / path).read_text()
    tree = ast.parse(source)
    parents, skipped = _parents(tree), _skipped_lines(source) | excluded
    mutants = []
    for index, node in enumerate(ast.walk(tree)):
        if not hasattr(node, "lineno") or node.lineno in skipped:
            continue
        if (isinstance(node, ast.Constant) and _is_docstring(node, parents)) or _in_annotation(node, parents):
            continue
        for variant, (description, _) in enumerate(_variants(node, parents)):
            scope, lines = _scope(node, parents)
            mutants.append(Mutant(path, index, variant, node.lineno, description, scope, lines))
    return mutants


def mutated_source(mutant: Mutant | None, path: str) -> str:
    """The module's source with the mutant applied (``None``: unparsed unchanged, the control)."""
    tree = ast.parse((REPO / path).read_text())
    if mutant is None:
        return ast.unparse(tree)
    parents = _parents(tree)
    nodes = list(ast.walk(tree))
    node = nodes[mutant.index]
    _, mutate = _variants(node, parents)[mutant.variant]
    original = copy.deepcopy(node)
    replacement = mutate(node)
    if replacement is not None:
        parent = parents[node]
        for name, value in ast.iter_fields(parent):
            if value is node:
                setattr(parent, name, replacement)
            elif isinstance(value, list) and any(v is node for v in value):
                value[[i for i, v in enumerate(value) if v is node][0]] = replacement
    mutated = ast.unparse(tree)
    if replacement is None and ast.dump(original) == ast.dump(node):
        raise RuntimeError(f"mutant {mutant} changed nothing")
    return mutated


class _SourceFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves one module from a string instead of its file."""

    def __init__(self, name: str, path: Path, source: str):
        self.name, self.path, self.source = name, path, source

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        return importlib.util.spec_from_loader(fullname, self, origin=str(self.path))

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__file__ = str(self.path)
        exec(compile(self.source, str(self.path), "exec"), module.__dict__)


# The top-level folders that pyproject.toml installs as sub-packages of nnunet_ctorg ([tool.setuptools.package-dir]):
# their modules are imported under that name, so a mutant must replace that module, not "dataset_conversion.x".
_INSTALLED_AS = {"dataset_conversion": "nnunet_ctorg.dataset_conversion",
                 "postprocessing": "nnunet_ctorg.postprocessing", "trainers": "nnunet_ctorg.trainers"}


def _module_name(path: str) -> str:
    top, _, rest = path.removesuffix(".py").partition("/")
    return ".".join(filter(None, (_INSTALLED_AS.get(top, top), rest.replace("/", "."))))


def _run_child(target: Callable[[], int], timeout: float, log: Path) -> tuple[str, float]:
    """Run ``target`` in a forked child; 'passed', 'failed' or 'timeout' and the seconds it took."""
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            signal.alarm(int(timeout))
            os._exit(int(target()))
        except BaseException:  # noqa: B036 - the child must never return into the parent's code
            import traceback

            traceback.print_exc()
            os._exit(99)
    _, status = os.waitpid(pid, 0)
    seconds = time.monotonic() - start
    if os.WIFSIGNALED(status):
        return ("timeout" if os.WTERMSIG(status) == signal.SIGALRM else "crashed"), seconds
    return ("passed" if os.WEXITSTATUS(status) == 0 else "failed"), seconds


def _pytest(args: list[str], plugins: list | None = None) -> int:
    import pytest

    return pytest.main(["-q", "-x", "-p", "no:cacheprovider", "--no-header", *args], plugins=plugins or [])


class _LineRecorder:
    """pytest plugin: for each test, the lines of the target files it executed (and the functions it called)."""

    def __init__(self, files: dict[str, str]):
        self.files = files  # absolute path -> repository path
        self.current: str | None = None
        self.lines: dict[str, set] = {}
        self.durations: dict[str, float] = {}

    def _trace(self, frame, event, arg):
        path = self.files.get(frame.f_code.co_filename)
        if path is None or self.current is None:
            return None
        seen = self.lines.setdefault(self.current, set())
        seen.add((path, frame.f_code.co_firstlineno))

        def local(frame, event, arg):
            if event == "line":
                seen.add((path, frame.f_lineno))
            return local

        return local

    def pytest_runtest_setup(self, item):
        self.current = item.nodeid

    def pytest_runtest_logreport(self, report):
        self.durations[report.nodeid] = self.durations.get(report.nodeid, 0.0) + report.duration

    def pytest_configure(self, config):
        import threading

        sys.settrace(self._trace)
        threading.settrace(self._trace)


def record_lines(paths: list[str], test_args: list[str], out: Path, log: Path) -> tuple[dict[str, set], list[str]]:
    """Baseline run under a line recorder (in a child): test id -> {(path, line)}, and every test id that
    ran, fastest first."""

    def target() -> int:
        recorder = _LineRecorder({str(REPO / p): p for p in paths})
        code = _pytest(test_args, plugins=[recorder])
        out.write_text(json.dumps({"lines": {k: sorted(v) for k, v in recorder.lines.items()},
                                   "durations": recorder.durations}))
        return code

    status, _ = _run_child(target, 3600, log)
    if status != "passed":
        sys.exit(f"the baseline run did not pass ({status}): see {log}")
    data = json.loads(out.read_text())
    durations = data["durations"]
    return {k: {tuple(x) for x in v} for k, v in data["lines"].items()}, sorted(durations, key=durations.get)


def _selected_tests(mutant: Mutant, coverage: dict[str, set], by_speed: list[str]) -> list[str]:
    """Test ids that executed the mutant's lines (every test for import-time code), fastest first."""
    if mutant.scope == "all":
        return by_speed
    wanted = {(mutant.path, line) for line in mutant.lines}
    return [test for test in by_speed if coverage.get(test, set()) & wanted]


def run_mutant(mutant: Mutant | None, path: str, tests: list[str], extra: list[str], timeout: float,
               log: Path) -> tuple[str, float]:
    source = mutated_source(mutant, path)

    def target() -> int:
        sys.meta_path.insert(0, _SourceFinder(_module_name(path), REPO / path, source))
        return _pytest([*tests, *extra])

    return _run_child(target, timeout, log)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="modules to mutate, relative to the repository")
    parser.add_argument("--tests", default="tests/augmentation", help="test path(s), comma-separated")
    parser.add_argument("--report", type=Path, required=True, help="JSON report (resumed if it exists)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per mutant run")
    parser.add_argument("--only", default=None, help="comma-separated 'path:line' to run (others kept)")
    parser.add_argument("--exclude", action="append", default=[], help="'path:FIRST-LAST' lines left alone")
    parser.add_argument("--sample", type=int, default=None, help="a random sample of this many mutants")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample")
    parser.add_argument("--list", action="store_true", help="only list the mutants")
    args, extra = parser.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    os.chdir(REPO)
    excluded: dict[str, set[int]] = {}
    for spec in args.exclude:
        path, span = spec.rsplit(":", 1)
        first, last = (int(v) for v in span.split("-"))
        excluded.setdefault(path, set()).update(range(first, last + 1))
    mutants = [m for p in args.paths for m in enumerate_mutants(p, excluded.get(p, set()))]
    if args.sample is not None and args.sample < len(mutants):
        import random

        chosen = set(random.Random(args.seed).sample(range(len(mutants)), args.sample))
        mutants = [m for i, m in enumerate(mutants) if i in chosen]
    if args.list:
        for m in mutants:
            print(f"{m.path}:{m.line} {m.description} [{m.scope}]")
        print(f"{len(mutants)} mutants")
        return
    for name in PRELOAD:
        importlib.import_module(name)
    test_paths = args.tests.split(",")
    work = args.report.with_suffix(".d")
    work.mkdir(parents=True, exist_ok=True)
    done = {}
    if args.report.is_file():
        done = {(m["path"], m["index"], m["variant"]): m for m in json.loads(args.report.read_text())["mutants"]}
    only = None if args.only is None else {tuple(x.rsplit(":", 1)) for x in args.only.split(",")}
    coverage, by_speed = record_lines(args.paths, [*test_paths, *extra], work / "lines.json", work / "baseline.log")
    for path in args.paths:  # control: the unparsed, unchanged module passes
        status, _ = run_mutant(None, path, test_paths, extra, args.timeout, work / "control.log")
        if status != "passed":
            sys.exit(f"the unchanged {path} does not pass through the mutant runner ({status}): {work}/control.log")
    results = []
    for i, mutant in enumerate(mutants):
        key = (mutant.path, mutant.index, mutant.variant)
        previous = done.get(key)
        rerun = only is not None and (mutant.path, str(mutant.line)) in only
        if previous is not None and previous["description"] == mutant.description and not rerun and (
                only is not None or previous["status"] in ("killed", "timeout")):
            mutant.status, mutant.seconds = previous["status"], previous["seconds"]
        elif only is not None and not rerun:
            mutant.status = previous["status"] if previous else "not run"
        else:
            tests = _selected_tests(mutant, coverage, by_speed)
            if not tests:
                mutant.status = "survived (no test runs it)"
            else:
                status, mutant.seconds = run_mutant(mutant, mutant.path, tests, extra, args.timeout,
                                                    work / f"{i}.log")
                mutant.status = {"passed": "survived", "failed": "killed", "crashed": "killed"}.get(status, status)
            print(f"[{i + 1}/{len(mutants)}] {mutant.path}:{mutant.line} {mutant.description}: {mutant.status} "
                  f"({mutant.seconds:.1f} s)", flush=True)
        results.append(mutant)
        args.report.write_text(json.dumps({"mutants": [asdict(m) for m in results] + [
            m for k, m in done.items() if k not in {(r.path, r.index, r.variant) for r in results}]}, indent=1))
    summarise(results)


def summarise(results: list[Mutant]) -> None:
    killed = sum(m.status in ("killed", "timeout") for m in results)
    print(f"killed {killed}/{len(results)} ({100 * killed / max(len(results), 1):.1f} %)")
    for m in results:
        if m.status.startswith("survived"):
            print(f"  alive: {m.path}:{m.line} {m.description} ({m.status})")


def iter_report(report: Path) -> Iterator[dict]:
    yield from json.loads(report.read_text())["mutants"]


if __name__ == "__main__":
    main()

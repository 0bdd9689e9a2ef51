"""Compile every @triton.jit kernel in the repository ahead of time for the GPU, without a GPU.

The CPU interpreter (TRITON_INTERPRET=1, what the tests use) does not enforce GPU compile rules, so a kernel that
passes every test here can still fail to compile on its first real launch. This script finds every file with an
@triton.jit function, imports it, and compiles each specialisation its launcher can use (the module's aot_specs():
dtypes, block configurations, constexpr values) for sm_80 and sm_90, printing one line per kernel, target and
specialisation. It fails when a compile fails, or when a jitted function is neither in some aot_specs() nor
called (directly or through other helpers) by a kernel that is.

    python scripts/compile_triton.py [--targets 80,90] [--jobs N]
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import os
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".venv", "build", "dist", ".git", "__pycache__", "demo_output", "runs"}


def kernel_files() -> list[Path]:
    """Every tracked-or-not .py file in the tree (outside virtualenvs and build output) with a @triton.jit."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if SKIP_DIRS & set(rel.parts[:-1]) or rel == Path(__file__).resolve().relative_to(ROOT):
            continue
        if re.search(r"^\s*@triton\.jit", path.read_text(errors="replace"), re.M):
            found.append(rel)
    return found


def import_module(rel: Path):
    if rel.parts[0] == "kernels":  # installed as fastmsfd.kernels: import it under that name (relative imports)
        return importlib.import_module("fastmsfd.kernels." + rel.with_suffix("").name)
    spec = importlib.util.spec_from_file_location("_aot_" + "_".join(rel.with_suffix("").parts), ROOT / rel)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def jit_functions(module) -> dict[str, object]:
    """The @triton.jit functions defined in `module` (JITFunction, or InterpretedFunction under the interpreter)."""
    from triton.runtime.jit import KernelInterface

    return {name: obj for name, obj in vars(module).items()
            if isinstance(obj, KernelInterface) and getattr(obj, "fn", None) is not None
            and obj.fn.__module__ == module.__name__}


def sources(functions: dict[str, object]) -> dict[str, str]:
    return {name: inspect.getsource(fn.fn) for name, fn in functions.items()}


def covered_helpers(entries: list[str], sources: dict[str, str]) -> set[str]:
    """Names of jitted helpers reachable from the entry kernels (names) through calls in their source."""
    seen, todo = set(), [sources[name] for name in entries]
    while todo:
        src = todo.pop()
        for name, text in sources.items():
            if name not in seen and name not in entries and re.search(rf"(?<!def )\b{re.escape(name)}\s*\(", src):
                seen.add(name)
                todo.append(text)
    return seen


def compile_one(job):
    """In a worker process: compile one specialisation; returns (line, error)."""
    module_name, file, kernel_name, label, signature, constexprs, cc = job
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module = sys.modules.get(module_name) or import_module(Path(file))
    fn = getattr(module, kernel_name)
    start = time.perf_counter()
    try:
        compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                                  target=GPUTarget("cuda", cc, 32))
        if not compiled.asm.get("cubin"):
            raise RuntimeError("no cubin produced")
    except Exception as exc:  # report every failure, not just the first
        return None, f"FAILED {kernel_name} sm_{cc} {label}: {type(exc).__name__}: {str(exc)[:2000]}"
    return f"compiled {kernel_name} sm_{cc} {label} ({time.perf_counter() - start:.1f} s)", None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--targets", default="80,90", help="compute capabilities, comma-separated")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("compile_triton: unset TRITON_INTERPRET (the interpreter skips the GPU compiler)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    # a fresh cache: a compile must really run, not be read back from an earlier run's ~/.triton/cache
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="fastmsfd-triton-aot-")
    targets = [int(t) for t in args.targets.split(",")]
    jobs, problems = [], []
    files = kernel_files()
    for rel in files:
        module = import_module(rel)
        functions = jit_functions(module)
        specs = list(module.aot_specs()) if hasattr(module, "aot_specs") else []
        entries = sorted({fn.fn.__name__ for fn, *_ in specs})
        helpers = covered_helpers(entries, sources(functions))
        for name in functions:
            if name not in entries and name not in helpers:
                problems.append(f"NOT COVERED {rel}::{name}: add its launch specialisations to {rel}'s aot_specs()")
        for fn, label, signature, constexprs in specs:
            for cc in targets:
                jobs.append((module.__name__, str(rel), fn.fn.__name__, label, signature, constexprs, cc))
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for line, error in pool.map(compile_one, jobs):
            print(line or error, flush=True)
            if error:
                problems.append(error)
    print(f"compile_triton: {len(jobs) - sum(p.startswith('FAILED') for p in problems)}/{len(jobs)} "
          f"specialisations of {sum(1 for _ in files)} file(s) compiled for "
          f"{', '.join(f'sm_{t}' for t in targets)} in {time.perf_counter() - start:.0f} s")
    shutil.rmtree(os.environ["TRITON_CACHE_DIR"], ignore_errors=True)
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

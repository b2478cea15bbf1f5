"""The engine's layout (docs/architecture.md): no import cycle in core, the algorithms import no
CPU-kernel or GPT-2-specific module, core never imports gradio, no file over ~400 lines.

The same check from the command line: `python tests/test_architecture.py` prints any cycle."""
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "core"
SPEED_MODULES = {"core.backends.gpt2", "core.backends.onednn", "core.backends.gelu", "core.backends.heap",
                 "core.backends.kernels", "core.backends.threads", "core.backends.seq_packing"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The core modules `path` imports, anywhere in the file (function-level imports count too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("core")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if not base.startswith("core"):
                continue
            for a in node.names:  # `from core.backends import gpt2` imports the module core.backends.gpt2
                sub = f"{base}.{a.name}"
                out.add(sub if (CORE.parent / (sub.replace(".", "/") + ".py")).exists()
                        or (CORE.parent / sub.replace(".", "/")).is_dir() else base)
    return out


def graph() -> dict[str, set[str]]:
    mods = {module_name(p): p for p in CORE.rglob("*.py")}
    return {m: {i for i in imports(p) if i in mods and i != m} for m, p in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    sys.setrecursionlimit(10000)
    for v in g:
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_in_core():
    g = graph()
    assert len(g) > 30 and "core.ppo.step" in g["core.ppo.loop"]
    assert cycles(g) == []


def test_the_algorithms_import_no_kernel_or_gpt2_module():
    g = graph()
    for m, deps in g.items():
        if m.startswith(("core.ppo", "core.reward", "core.rl")):
            assert not deps & SPEED_MODULES, (m, deps & SPEED_MODULES)


def test_core_never_imports_gradio_and_files_stay_small():
    for p in list(CORE.rglob("*.py")) + list((ROOT / "workbench").rglob("*.py")):
        text = p.read_text()
        if p.is_relative_to(CORE):
            assert "import gradio" not in text and "from gradio" not in text, p
        assert len(text.splitlines()) <= 420, (p, len(text.splitlines()))


if __name__ == "__main__":
    found = cycles(graph())
    print("\n".join(" -> ".join(c) for c in found) or "no import cycle in core")
    sys.exit(1 if found else 0)

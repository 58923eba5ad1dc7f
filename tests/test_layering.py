"""The layering rule, read from the source with ``ast``: a recipe imports only from the layers below; what two
recipes share lives in a component. Orchestrators (bon-study, demo) may call another recipe's ``run()`` with its
config class, nothing else of it."""

import ast
from pathlib import Path

import pytest

import rlhf_lab

PACKAGE = Path(rlhf_lab.__file__).parent
ORCHESTRATORS = {"bon_study", "demo"}
# the presentation layer and the verb table sit above the recipes
ABOVE_RECIPES = {"cli.py", "commands.py"}


def _allowed_name(name: str) -> bool:
    return name == "run" or name.endswith("Config")


def recipe_imports(path: Path, package: Path = PACKAGE) -> list[tuple[int, str, str | None]]:
    """(line, recipe module, imported name or None for a module import bound to a local name) for every import of
    ``rlhf_lab.recipes.*`` in ``path``, absolute or relative, at any depth (imports inside functions count);
    a module import bound to a name also yields every ``name.attribute`` the file reads."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str, str | None]] = []
    aliases: dict[str, str] = {}  # local name -> recipe module
    here = ["rlhf_lab", *path.parent.relative_to(package).parts]  # the file's package, for relative imports
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: "." is the file's package, ".." its parent, ...
                base = ".".join(filter(None, [*here[:len(here) - node.level + 1], base]))
            if base == "rlhf_lab.recipes":
                for a in node.names:  # from rlhf_lab.recipes import ppo [as x]
                    aliases[a.asname or a.name] = a.name
                    found.append((node.lineno, a.name, None))
            elif base.startswith("rlhf_lab.recipes."):
                module = base.split(".")[2]
                found += [(node.lineno, module, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("rlhf_lab.recipes."):
                    module = a.name.split(".")[2]
                    if a.asname:
                        aliases[a.asname] = module
                    found.append((node.lineno, module, None))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            found.append((node.lineno, aliases[node.value.id], node.attr))
    return found


def violations(package: Path = PACKAGE) -> list[str]:
    bad = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        me = path.stem if path.parent == package / "recipes" else None
        for line, module, name in recipe_imports(path, package):
            where = f"{rel}:{line}: {module}" + (f".{name}" if name else "")
            if me is None:
                if str(rel) not in ABOVE_RECIPES and rel.parts[0] != "report":
                    bad.append(f"{where} (a layer below the recipes imports a recipe)")
            elif module == me:
                continue
            elif me in ORCHESTRATORS:
                if name is not None and not _allowed_name(name):
                    bad.append(f"{where} (an orchestrator may use only run() and the config class)")
            else:
                bad.append(f"{where} (a recipe imports another recipe)")
    return bad


def test_recipes_import_only_from_the_layers_below():
    assert violations() == []


def test_the_check_finds_each_kind_of_violation(tmp_path):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (tmp_path / "losses.py").write_text("def f():\n    from rlhf_lab.recipes.ppo import run\n")
    (recipes / "sft.py").write_text("from rlhf_lab.recipes.merge import merge_dirs\n")
    (recipes / "pareto.py").write_text("from . import merge\n")
    (recipes / "demo.py").write_text("from rlhf_lab.recipes import ppo\nppo.run(ppo.PPOConfig())\nppo.omit_long()\n")
    (recipes / "bon_study.py").write_text("import rlhf_lab.recipes.bon as b\nfrom rlhf_lab.recipes.bon import x\n")
    (recipes / "raft.py").write_text("from rlhf_lab.data.raft_hooks import clean_text\n")
    assert violations(tmp_path) == [
        "losses.py:2: ppo.run (a layer below the recipes imports a recipe)",
        "recipes/bon_study.py:2: bon.x (an orchestrator may use only run() and the config class)",
        "recipes/demo.py:3: ppo.omit_long (an orchestrator may use only run() and the config class)",
        "recipes/pareto.py:1: merge (a recipe imports another recipe)",
        "recipes/sft.py:1: merge.merge_dirs (a recipe imports another recipe)",
    ]


@pytest.mark.parametrize("name", ["run", "PPOConfig", "BonStudyConfig"])
def test_orchestrators_may_use_run_and_configs(name):
    assert _allowed_name(name)

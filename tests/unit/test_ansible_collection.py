"""The llmctl.fleet collection's pieces that need no ansible run: its documentation says what its
code does, and its module_utils read llmctl's output right.

What ansible-test's validate-modules checks, for our modules: every option of a module's
argument_spec is documented with the same type, default, choices and elements, and nothing else is
(ansible-test sanity cannot set up its venvs here: its pip bootstrap comes from a host we cannot
reach). And the role's argument_specs.yml gives the defaults that defaults/main.yml sets.
"""

from __future__ import annotations

import ast
import importlib
import json
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
pytest.importorskip("ansible.module_utils.basic", reason="needs ansible-core (the test extra)")

REPO = Path(__file__).resolve().parents[2]
COLLECTION = REPO / "ansible"
MODULES = sorted(p.stem for p in (COLLECTION / "plugins/modules").glob("*.py"))


def _docs(path: Path) -> dict:
    """The YAML strings (DOCUMENTATION, EXAMPLES, RETURN) assigned at the top level of a plugin file."""
    out = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ClassDef):  # a doc fragment keeps them in a class
            out.update(_docs_of(node.body))
    out.update(_docs_of(ast.parse(path.read_text()).body))
    return out


def _docs_of(body) -> dict:
    return {
        n.targets[0].id: yaml.safe_load(n.value.value)
        for n in body
        if isinstance(n, ast.Assign)
        and isinstance(n.targets[0], ast.Name)
        and n.targets[0].id in ("DOCUMENTATION", "EXAMPLES", "RETURN")
    }


class _Captured(Exception):
    pass


@pytest.fixture
def spec_of(tmp_path, monkeypatch):
    """module name -> the argument_spec its main() hands to AnsibleModule (main() stops right there)."""
    root = tmp_path / "collections"
    (root / "ansible_collections" / "llmctl").mkdir(parents=True)
    (root / "ansible_collections" / "llmctl" / "fleet").symlink_to(COLLECTION)
    monkeypatch.syspath_prepend(str(root))
    for name in [m for m in sys.modules if m.startswith("ansible_collections")]:
        monkeypatch.delitem(sys.modules, name)
    import ansible.module_utils.basic as basic

    def capture(self, argument_spec, **kwargs):
        raise _Captured(argument_spec, kwargs)

    monkeypatch.setattr(basic.AnsibleModule, "__init__", capture)

    def get(name: str) -> tuple[dict, dict]:
        mod = importlib.import_module(f"ansible_collections.llmctl.fleet.plugins.modules.{name}")
        with pytest.raises(_Captured) as exc:
            mod.main()
        return exc.value.args

    return get


@pytest.mark.parametrize("name", MODULES)
def test_module_documentation_matches_its_argument_spec(name, spec_of):
    spec, kwargs = spec_of(name)
    assert kwargs.get("supports_check_mode") is True
    doc = _docs(COLLECTION / f"plugins/modules/{name}.py")
    documentation = doc["DOCUMENTATION"]
    assert documentation["module"] == name
    assert documentation["extends_documentation_fragment"] == ["llmctl.fleet.common"]
    options = dict(_docs(COLLECTION / "plugins/doc_fragments/common.py")["DOCUMENTATION"]["options"])
    options.update(documentation["options"])
    assert sorted(options) == sorted(spec)
    for key, arg in spec.items():
        opt = options[key]
        assert opt.get("type", "str") == arg.get("type", "str"), key
        assert opt.get("default") == arg.get("default"), key
        assert opt.get("choices") == arg.get("choices"), key
        assert opt.get("elements") == arg.get("elements"), key
        assert bool(opt.get("required")) == bool(arg.get("required")), key
        if arg.get("no_log"):
            text = opt["description"] if isinstance(opt["description"], str) else " ".join(opt["description"])
            assert "never logged" in text.lower(), key
    assert isinstance(doc["EXAMPLES"], list) and doc["RETURN"]


def test_role_argument_specs_give_the_defaults_of_defaults_main():
    role = COLLECTION / "roles/host"
    defaults = yaml.safe_load((role / "defaults/main.yml").read_text())
    specs = yaml.safe_load((role / "meta/argument_specs.yml").read_text())["argument_specs"]
    options = specs["main"]["options"]
    assert sorted(options) == sorted(defaults)  # every variable documented, none invented
    for key, opt in options.items():
        value = defaults[key]
        if "{{" in json.dumps(value):
            assert "default" not in opt, key  # a computed default is described, not restated
        else:
            assert opt.get("default") == value, key
    for entry in ("health", "verify", "bench"):
        assert specs[entry]["options"] == options


@pytest.fixture
def utils(spec_of):
    return importlib.import_module("ansible_collections.llmctl.fleet.plugins.module_utils.llmctl")


def test_error_line_is_llmctls_error_and_hint_or_typers_framed_message(utils):
    assert (
        utils.error_line("progress\nError: model 'x' is not installed\nHint: see `llmctl models list`\n")
        == "Error: model 'x' is not installed Hint: see `llmctl models list`"
    )
    typer_usage = (
        "Usage: llmctl bench [OPTIONS] [MODEL]\nTry 'llmctl bench -h' for help.\n"
        "\u256d\u2500 Error \u2500\u2500\u2500\u2500\u256e\n"
        "\u2502 No such option: --bogus         \u2502\n"
        "\u2570\u2500\u2500\u2500\u2500\u2500\u2500\u2500\u2500\u256f\n"
    )
    assert utils.error_line(typer_usage) == "No such option: --bogus"
    assert utils.error_line("") == ""


def test_parse_json_takes_an_array_or_an_object_and_nothing_else(utils):
    assert utils.parse_json('[{"test": "pp8"}]\n') == [{"test": "pp8"}]  # issue 20's bare llama-bench array
    assert utils.parse_json('{"kind": "bench", "results": []}') == {"kind": "bench", "results": []}
    assert utils.parse_json("| model | size |\n") is None and utils.parse_json("") is None

import importlib.metadata

import pytest
from click.testing import CliRunner

from reranker._extras import require
from reranker.cli import main


def test_missing_extra_names_the_install_command(monkeypatch):
    import reranker._extras as extras

    real = extras.importlib.import_module

    def fake_import_module(name, *args):
        if name == "opensearchpy":
            raise ModuleNotFoundError("No module named 'opensearchpy'")
        return real(name, *args)

    monkeypatch.setattr(extras.importlib, "import_module", fake_import_module)
    with pytest.raises(ImportError, match=r"pip install 'kd-reranker\[opensearch\]'"):
        require("opensearchpy", "opensearch")


def test_every_command_has_help():
    runner = CliRunner()
    names = main.list_commands(None)
    assert {
        "index",
        "search",
        "train-teacher",
        "augment",
        "label",
        "distill",
        "export",
        "eval",
    } <= set(names)
    for name in names:
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, name


def test_a_plugin_command_whose_extra_is_missing_says_how_to_install(monkeypatch):
    class BrokenEntryPoint:
        name = "broken"

        def load(self):
            raise ImportError(
                "torch is needed for this feature but is not installed; "
                "install it with: pip install 'kd-reranker[train]'"
            )

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [BrokenEntryPoint()])
    result = CliRunner().invoke(main, ["broken"])
    assert result.exit_code == 1
    assert "pip install 'kd-reranker[train]'" in result.output

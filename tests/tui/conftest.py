"""Fixtures for the operator's view: the tiny-lab fixtures of the controller tests (a prepared
cache over a local corpus, `make_lab`), loaded from tests/controller/conftest.py under another
module name so that both directories keep their own conftest."""

import importlib.util
import sys
from pathlib import Path

_HERE = Path(__file__).parent
sys.path.insert(0, str(_HERE.parent / "controller"))  # lab_helpers, as the controller tests use it
_spec = importlib.util.spec_from_file_location("controller_test_fixtures", _HERE.parent / "controller" / "conftest.py")
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)

corpus = _fixtures.corpus
charter_env = _fixtures.charter_env
make_lab = _fixtures.make_lab
edit_lab = _fixtures.edit_lab

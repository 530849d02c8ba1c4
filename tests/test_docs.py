"""The README's config reference is the one the code generates (so it cannot drift)."""
from pathlib import Path

from tunelab.config import readme_with_reference

ROOT = Path(__file__).resolve().parent.parent


def test_readme_config_reference_is_current():
    readme = (ROOT / "README.md").read_text()
    assert readme == readme_with_reference(readme), "run `make docs` to refresh the README config reference"


def test_readme_names_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme

"""yamllint over every YAML file in deploy/, shellcheck over the scripts, and
the README's references to files."""

from __future__ import annotations

import re
import subprocess

import helpers

YAMLLINT = helpers.DEPLOY / ".yamllint"


def _yaml_files():
    return sorted(
        p
        for ext in ("*.yaml", "*.yml")
        for p in helpers.DEPLOY.rglob(ext)
        if ".venv" not in p.parts
    )


def _yamllint(*paths) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(helpers.VENV_BIN / "yamllint"), "-f", "parsable", "-c", str(YAMLLINT), *map(str, paths)],
        capture_output=True,
        text=True,
    )


def test_yamllint_passes():
    files = _yaml_files()
    assert len(files) >= 10
    res = _yamllint(*files)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout == ""


def test_yamllint_config_catches_problems(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("---\nkey: yes\nkey: no\nlist:\n    -  a\n")
    res = _yamllint(bad)
    assert res.returncode != 0
    assert "truthy" in res.stdout and "key-duplicates" in res.stdout


def test_shellcheck_passes():
    scripts = [helpers.DEPLOY / "test.sh", helpers.DEPLOY / "compose" / "load.sh"]
    res = subprocess.run(
        [str(helpers.VENV_BIN / "shellcheck"), *map(str, scripts)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_readme_mentions_only_existing_paths():
    text = (helpers.DEPLOY / "README.md").read_text()
    paths = set(re.findall(r"(?<![\w/.-])(deploy/(?:docker|k8s|compose|tests|test\.sh|README\.md|\.yamllint)[\w./-]*)", text))
    assert len(paths) >= 5
    missing = sorted(p for p in paths if not (helpers.REPO / p.rstrip(".")).exists())
    assert not missing, missing

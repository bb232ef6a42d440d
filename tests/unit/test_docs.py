"""The documentation stays true to the repository: generated tables, relative links, a short README."""

import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
DOCS = [REPO / 'README.md', REPO / 'CHANGELOG.md', REPO / 'models' / 'README.md', *sorted((REPO / 'docs').glob('*.md'))]
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)')
CODE = re.compile(r'```.*?```|`[^`\n]*`', re.DOTALL)


def relative_links(path: pathlib.Path) -> list:
    """Targets of the markdown links in a file that point into the repository (no URL, no bare anchor)."""
    text = CODE.sub('', path.read_text())
    targets = [match.group(1) for match in LINK.finditer(text)]
    return [t for t in targets if not re.match(r'^([a-z][a-z0-9+.-]*:|#)', t)]


def test_benchmark_tables_match_the_results():
    check = subprocess.run(
        [sys.executable, str(REPO / 'tools' / 'benchmark_tables.py'), '--check'], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr


def test_every_relative_link_points_at_a_file_of_the_repository():
    assert len(DOCS) > 4, DOCS
    broken = []
    for doc in DOCS:
        for target in relative_links(doc):
            resolved = (doc.parent / target.split('#')[0]).resolve()
            if not resolved.exists() or REPO not in (resolved, *resolved.parents):
                broken.append(f'{doc.relative_to(REPO)}: {target}')
    assert not broken, broken


def test_the_readme_is_short():
    lines = (REPO / 'README.md').read_text().splitlines()
    assert len(lines) <= 330, f'README.md has {len(lines)} lines; move details to docs/'

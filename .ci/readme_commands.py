"""Print the README's two commands (set-up, then tests), verbatim, one per line: what ``.ci/run`` executes.

They are the fenced ``bash`` blocks of the README's "## Two commands" section; anything else there is an
error, so the README and CI cannot drift apart.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

SECTION = "## Two commands"


def readme_commands(text: str) -> list[str]:
    """The bash blocks of the "## Two commands" section (exactly two: set-up, tests)."""
    start = text.find(f"\n{SECTION}\n")
    if start < 0:
        raise ValueError(f"README.md: the section {SECTION!r} must exist; got none.")
    body = text[start + len(SECTION) + 2:]
    end = re.search(r"^## ", body, re.M)
    body = body[: end.start()] if end else body
    blocks = [b.strip() for b in re.findall(r"^```bash\n(.*?)^```$", body, re.M | re.S)]
    if len(blocks) != 2 or any("\n" in b for b in blocks):
        raise ValueError(f"README.md: {SECTION!r} must hold exactly two one-line bash blocks (set-up, tests); got "
                         f"{blocks!r}.")
    return blocks


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "README.md")
    try:
        print("\n".join(readme_commands(path.read_text(encoding="utf-8"))))
    except ValueError as exc:
        sys.exit(str(exc))

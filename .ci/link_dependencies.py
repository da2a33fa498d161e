"""Link detops' installed runtime dependencies into another environment's site-packages.

The plain-install smoke test needs torch in a fresh environment, and torch's CUDA build
unpacks to 5.5 GB: a second copy filled CI's disk once. So the smoke environment gets
symbolic links to the copies that `make test` already installed, but only for the
distributions that detops' own requirements pull in (no extras: no pytest, no ruff), so a
command that needs an extra still fails there. `pip install .` then resolves against them
as it would against any installed package.

Run with the interpreter of the environment that holds the dependencies:
    .venv/bin/python .ci/link_dependencies.py TARGET_SITE_PACKAGES
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def runtime_closure(root: str) -> list[metadata.Distribution]:
    """The installed distributions that `root`'s requirements (no extras) need, transitively."""
    seen: dict[str, metadata.Distribution] = {}
    pending = [Requirement(line) for line in metadata.requires(root) or []]
    while pending:
        requirement = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        distribution = metadata.distribution(requirement.name)
        if not requirement.specifier.contains(distribution.version, prereleases=True):
            raise SystemExit(f"{requirement} is required, {distribution.version} is installed")
        seen[name] = distribution
        pending.extend(Requirement(line) for line in distribution.requires or [])
    return list(seen.values())


def top_level_entries(distribution: metadata.Distribution) -> set[Path]:
    """Absolute paths of the site-packages entries a distribution installed."""
    site_packages = Path(str(distribution.locate_file("")))
    entries = set()
    for file in distribution.files or []:
        first = file.parts[0]
        if first not in ("..", "__pycache__"):  # console scripts live in bin/
            entries.add(site_packages / first)
    return entries


def main() -> None:
    target = Path(sys.argv[1])
    linked, kept = 0, []
    for distribution in runtime_closure("detops"):
        sources = [source for source in top_level_entries(distribution) if source.exists()]
        # a distribution the new environment already has (pip, setuptools) stays its own
        if any(
            (target / source.name).exists() and (target / source.name).resolve() != source.resolve()
            for source in sources
        ):
            kept.append(distribution.metadata["Name"])
            continue
        for source in sources:
            link = target / source.name
            if not link.exists():  # namespace folders (nvidia/) are shared by several
                link.symlink_to(source)
                linked += 1
    own = f"; kept its own {', '.join(kept)}" if kept else ""
    print(f"linked {linked} installed entries into {target}{own}")


if __name__ == "__main__":
    main()

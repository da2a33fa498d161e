"""Link detops' installed runtime dependencies into another environment's site-packages.

The plain-install smoke test needs torch in a fresh environment, and torch's CUDA build
unpacks to 5.5 GB: a second copy filled CI's disk once. So the smoke environment gets
symbolic links to the copies that `make test` already installed, but only for the
distributions that detops' own requirements pull in (no extras of detops: no pytest, no
ruff), so a command that needs an extra still fails there. `pip install .` then resolves
against them as it would against any installed package. Never uninstall a package in that
environment: pip would delete the files the links point to.

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
    """The installed distributions that `root`'s requirements (no extras of its own) need,
    transitively, with the extras those requirements ask for (torch asks for
    ``cuda-toolkit[cublas, ...]``, whose packages only those extras require)."""
    seen: dict[str, metadata.Distribution] = {}
    done: set[tuple[str, str]] = set()  # (distribution, extra or "") whose needs are queued
    pending = [Requirement(line) for line in metadata.requires(root) or []]
    pending = [r for r in pending if r.marker is None or r.marker.evaluate({"extra": ""})]
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name not in seen:
            distribution = metadata.distribution(requirement.name)
            if not requirement.specifier.contains(distribution.version, prereleases=True):
                raise SystemExit(f"{requirement} is required, {distribution.version} is installed")
            seen[name] = distribution
        for extra in {"", *requirement.extras}:
            if (name, extra) in done:
                continue
            done.add((name, extra))
            for line in seen[name].requires or []:
                needed = Requirement(line)
                if needed.marker is None or needed.marker.evaluate({"extra": extra}):
                    pending.append(needed)
    return list(seen.values())


def entries(distribution: metadata.Distribution) -> tuple[Path, set[Path]]:
    """A distribution's site-packages folder, and the paths in it to link: its top-level
    entries, but the files themselves inside a namespace folder (``nvidia/``: no
    ``__init__.py``, shared by several distributions, so it is made as a real folder and
    pip never writes through a link into the environment the links point to)."""
    site_packages = Path(str(distribution.locate_file("")))
    paths = set()
    for file in distribution.files or []:
        parts = file.parts
        if parts[0] in ("..", "__pycache__"):  # console scripts live in bin/
            continue
        top = site_packages / parts[0]
        namespace = (
            len(parts) > 1
            and not parts[0].endswith(".dist-info")
            and top.is_dir()
            and not (top / "__init__.py").exists()
        )
        paths.add(Path(*parts) if namespace else Path(parts[0]))
    return site_packages, paths


def main() -> None:
    target = Path(sys.argv[1])
    linked, kept = 0, []
    for distribution in runtime_closure("detops"):
        site_packages, paths = entries(distribution)
        paths = {path for path in paths if (site_packages / path).exists()}
        # a distribution the new environment already has (pip, setuptools) stays its own
        if any(
            (target / path).exists()
            and (target / path).resolve() != (site_packages / path).resolve()
            for path in paths
        ):
            kept.append(distribution.metadata["Name"])
            continue
        for path in sorted(paths):
            link = target / path
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(site_packages / path)
                linked += 1
    own = f"; kept its own {', '.join(kept)}" if kept else ""
    print(f"linked {linked} installed entries into {target}{own}")


if __name__ == "__main__":
    main()

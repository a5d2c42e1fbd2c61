"""The installed package's version: for `verify --version`, results folders and run.toml."""

from __future__ import annotations


def package_version() -> str:
    """The version pip installed ("unknown" when run from a source tree that is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("relu-verifier")
    except PackageNotFoundError:
        return "unknown"

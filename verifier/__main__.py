"""`python -m verifier ...`: the `verify` command, for an environment whose scripts folder is
not on PATH (or to pick the interpreter explicitly). Same options, output and exit codes."""

from verifier.cli import main

if __name__ == "__main__":  # spawned worker processes import this module without running it
    main()

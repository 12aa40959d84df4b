"""`python -m runner`: the same command line as the `runner` script."""

from runner.cli import main

if __name__ == "__main__":
    main()

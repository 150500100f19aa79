"""``python -m facebank``: the command line."""

from facebank.cli import main

if __name__ == "__main__":
    main()

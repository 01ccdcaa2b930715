"""``python -m asymgrpo``: the same commands as the ``asymgrpo`` console script."""

from .cli import main

if __name__ == "__main__":  # vLLM may start worker processes with spawn, which re-imports __main__
    raise SystemExit(main())

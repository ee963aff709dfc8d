"""``python -m adapeft_optim demo``: the ``adapeft`` command line without the console script."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())

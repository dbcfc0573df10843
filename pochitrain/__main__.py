"""``python -m pochitrain VERB ...`` (e.g. ``torchrun --nproc-per-node 2 -m pochitrain train``)."""

from pochitrain.cli.main import main

if __name__ == "__main__":
    main()

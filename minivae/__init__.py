"""minivae: variational autoencoders on a from-scratch NumPy/CuPy engine.

Read the source in this order. The engine: backend -> layers (with conv) -> losses -> optim ->
models (fast/ holds the same arithmetic, faster on NumPy) -> gradcheck, statcheck. Every backward
pass carries its derivation next to the code. Then the program, each file one job:

    files      the one atomic write (temporary name, then rename) every written file goes through
    progress   progress bars, only where stderr is a terminal
    idx        the IDX file format of MNIST / FashionMNIST
    download   the datasets' files, mirrors, verification and the downloader
    data       a split as uint8 arrays, and float batches on a backend
    config     a run's settings: seed defaults, validation, random streams
    checkpoint a run folder on disk: checkpoints, metrics.csv, config.json
    evaluate   test ELBO, IWAE, reconstructions; loading a saved run
    train      the training loop, with exact resume
    plots      pictures from arrays (imports nothing of the program but files)
    visualise  `minivae plot`: the pictures of a saved run
    bench      `minivae bench`: minivae's own step timing
    cli        the `minivae` command (entry point: __main__)
"""

__version__ = "0.1.0"

"""housebox: train a Jukebox-style music generator on your own audio catalogue.

Layers, each importing only those below it (pyproject's import-linter contract; `make test` checks it):

    cli                  the command line
    demo | web           the built-in demo; the local web page
    evaluate             what a run produced: stages, music statistics, originality (uses train's metrics)
    train                the training loop and each model's training (samples through generate to monitor)
    generate             sampling codes from the priors and decoding them: a run folder -> audio
    data                 prepare, the dataset, labels, code caches, the demo corpus
    models | report      networks and their losses | PNG figures and HTML pages from arrays and JSON
    audio                reading, writing, features, the one STFT framing, vocal removal
    config | store       presets and overrides | the model-directory format, atomic writes, hashes
"""

__version__ = "0.1.0"

"""housebox: train a Jukebox-style music generator on your own audio catalogue."""

__version__ = "0.1.0"

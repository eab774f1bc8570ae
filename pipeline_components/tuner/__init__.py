"""The Tuner: a KerasTuner search over the head's hyperparameters, trials on the streamed
backbone features (or on images when features cannot be cached). search.py is the entry."""

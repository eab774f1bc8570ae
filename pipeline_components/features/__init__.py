"""Backbone features as an artifact: written once by a Beam job (writer.py), streamed from disk
by the head's training and the Tuner (stream.py). The file format and the manifest: files.py."""

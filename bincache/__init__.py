"""bincache: relocatable, signed, content-addressed binary packages for installed prefixes."""

__version__ = "0.1.0"

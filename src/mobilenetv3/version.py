"""The package's version, in a module of its own: code anywhere in the package reads it from here without
importing the package's ``__init__`` (which imports the tasks, and through them almost everything)."""
__version__ = "0.1.0"

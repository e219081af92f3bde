"""The one exception type for bad configuration: the CLI prints its message as one line, no traceback."""


class ConfigError(ValueError):
    """A configuration that cannot work; raised before any weights load, naming the offending key."""

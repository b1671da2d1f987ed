"""The one exception family. Messages say what to do; the CLI prints them as
`error: ...` with exit code 2 and the server answers them with HTTP 4xx."""


class NoisecraftError(Exception):
    """A user-facing error: bad input, missing file, impossible option."""

"""The error hierarchy. A user's mistake raises one of these; the CLI prints the
message and exits 2, the server answers 4xx. Anything else is a bug."""


class SGLangDiffusionError(Exception):
    """Base of every error that is the user's to fix."""


class ConfigError(SGLangDiffusionError):
    """A bad flag, config key, value or combination."""


class ModelLoadError(SGLangDiffusionError):
    """A model or component that cannot be found or read."""


class InvalidRequestError(SGLangDiffusionError):
    """A generation request that cannot be served."""


class NotSupportedYetError(ConfigError):
    """An option that is parsed and validated, whose capability has not landed."""


class RankFailedError(SGLangDiffusionError):
    """A rank process died or raised while serving a request."""


class RequestCancelled(SGLangDiffusionError):
    """The request was cancelled while it ran."""

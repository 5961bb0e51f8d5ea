"""The exceptions our plugins raise and understand."""


class ConfigError(ValueError):
    """A configuration option is missing or has a bad value.

    Raised while a config is loaded, never per request; the message names the option.
    """


class BackendUnavailable(Exception):
    """The identity backend (e.g. the LDAP server) could not be asked.

    This is not a "no": a wrapped plugin raises it when it cannot answer at all (server down,
    time-out). The cache plugin logs it without a traceback, may serve a recently expired
    entry (``stale_ttl``) and otherwise answers None; it never caches it as a denial.
    """

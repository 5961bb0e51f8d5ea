"""The exceptions our plugins raise and understand."""

from __future__ import annotations

UNKNOWN_OPTION = "unknown option"


class ConfigError(ValueError):
    """A configuration option is missing or has a bad value.

    Raised while a config is loaded, never per request. It carries where the problem is as
    data (``section``, ``option``) as well as in its text, so that a loader that knows more
    than the factory that raised (which section of which file; that the options were
    ``authenticator.*`` sub-options of a cache) can say so without parsing messages:
    ``[plugin:cached_ldap]: option 'authenticator.base_dn': is required``.
    """

    def __init__(self, problem: str, *, option: str | None = None,
                 section: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.option = option
        self.section = section

    def __str__(self) -> str:
        parts = [self.section] if self.section else []
        if self.option and self.problem.startswith(UNKNOWN_OPTION):
            # "unknown option 'tll'" reads better than "option 'tll': unknown option"
            parts.append(f"{UNKNOWN_OPTION} {self.option!r}{self.problem[len(UNKNOWN_OPTION):]}")
        else:
            if self.option:
                parts.append(f"option {self.option!r}")
            parts.append(self.problem)
        return ": ".join(parts)

    def in_section(self, section: str) -> ConfigError:
        """The same problem, said to come from ``section`` (e.g. ``[plugin:cached_ldap]``)."""
        return ConfigError(self.problem, option=self.option, section=section)

    def under(self, prefix: str) -> ConfigError:
        """The same problem in a sub-option: ``base_dn`` of ``authenticator`` becomes
        ``authenticator.base_dn``; the section is left for the outer loader to say."""
        option = f"{prefix}.{self.option}" if self.option else prefix
        return ConfigError(self.problem, option=option)


class BackendUnavailable(Exception):
    """The identity backend (e.g. the LDAP server) could not be asked.

    This is not a "no": a wrapped plugin raises it when it cannot answer at all (server down,
    time-out). The cache plugin logs it without a traceback, may serve a recently expired
    entry (``stale_ttl``) and otherwise answers None; it never caches it as a denial.
    """

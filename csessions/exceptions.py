class SessionCookieTooLarge(ValueError):
    """The signed session cookie would exceed what browsers store (they drop it silently)."""

    def __init__(self, name, size, limit):
        self.name, self.size, self.limit = name, size, limit
        super().__init__(
            f"Session cookie {name!r} would be {size} bytes (name + value), over the "
            f"{limit}-byte limit browsers enforce; they would drop it without a word. "
            "Store less in the session, or use a server-side engine. "
            "Set CSESSIONS_COOKIE_OVERSIZE = 'warn' to log instead of raising."
        )

"""Code every app imports: background jobs, errors, parsers, lock helpers, the HTTP edge, display formats.

Not an app and no models; it imports none of marketplace, payouts or dispatch.
"""

"""The one error of the amendment process a person sees: `AmendmentRefused`, one line.

Every refusal (a bad id, separation of duty, a signature that does not verify, applying during a
session, a rollback) is raised as this, with a sentence that names the thing and the fix; the
command line prints it and exits 1. Where the refusal concerns a ratification it has already
been ledgered when this is raised.
"""


class AmendmentRefused(Exception):
    """An amendment action that may not happen; the message says why and what to do."""

"""The one exception type for mistakes a user can fix; the CLI prints it as one line and exits 2."""


class UserError(Exception):
    """A bad job file, a bad override, missing data, or a cluster too small for the job."""

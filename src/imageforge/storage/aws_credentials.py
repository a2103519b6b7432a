"""AWS credentials for the s3 backend, found the way the AWS CLI finds them.

obstore's own chain knows the environment, web identity and container/instance roles,
but not the shared config and credentials files (profiles, SSO, `credential_process`).
botocore's chain knows all of them, in the documented order, so the backend hands
obstore a provider that asks botocore. botocore resolves lazily: nothing is read or
fetched until obstore first needs credentials (the start-up check), and refreshable
credentials (roles, SSO) are renewed by botocore ahead of their expiry.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from obstore.store import S3Credential

#: How long obstore keeps temporary credentials before asking again; botocore renews
#: them well before they expire (15 minutes ahead), so asking every few minutes is enough.
REFRESH_EVERY = timedelta(minutes=5)


NO_CREDENTIALS = "no AWS credentials found"
NO_CREDENTIALS_HELP = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, name a profile of the AWS config "
    "files with AWS_PROFILE, or run with an instance or container role"
)


class NoCredentials(OSError):
    """The AWS chain found no credentials at all."""


class AwsCredentialChain:
    """An obstore credential provider backed by botocore's credential chain."""

    def __init__(self, session: Any = None) -> None:
        import botocore.session

        self._session = session or botocore.session.get_session()
        self._credentials: Any = None

    def region(self) -> str | None:
        """The region the AWS configuration names (AWS_REGION, AWS_DEFAULT_REGION, the
        profile's `region`), if any."""
        region = self._session.get_config_variable("region")
        return str(region) if region else None

    def __call__(self) -> S3Credential:
        if self._credentials is None:
            self._credentials = self._session.get_credentials()
            if self._credentials is None:
                raise NoCredentials(f"{NO_CREDENTIALS}: {NO_CREDENTIALS_HELP}")
        frozen = self._credentials.get_frozen_credentials()
        # Static keys never expire; temporary ones are asked for again regularly.
        temporary = frozen.token is not None or hasattr(self._credentials, "refresh_needed")
        return {
            "access_key_id": frozen.access_key,
            "secret_access_key": frozen.secret_key,
            "token": frozen.token,
            "expires_at": datetime.now(UTC) + REFRESH_EVERY if temporary else None,
        }

"""The privacy filter before a cloud target (README "Privacy before the cloud"): personal data
and secrets become typed placeholders on the way out and are restored on the way back."""

from routing.privacy.scrubber import PII_TYPES, Restorer, Scrubber, Vault

__all__ = ["PII_TYPES", "Restorer", "Scrubber", "Vault"]

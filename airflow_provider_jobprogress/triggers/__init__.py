"""The one generic trigger."""

"""Testing aids for users of the provider: local emulators of the vendor APIs."""

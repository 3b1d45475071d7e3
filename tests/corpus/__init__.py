"""Bad input of every kind a user can hand fgir, written to disk for the CLI's error tests."""

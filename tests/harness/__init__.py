"""Test harness: real brokers and databases started by the tests themselves."""

"""The built-in testbed providers; each registers through the same hook as third parties."""

"""The provider interface, its types and errors, the plugin manager, the ledger and SSH."""

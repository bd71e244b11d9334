"""One module per subcommand: each turns options into a typed result (a Report, a
LockResult...) through the core. Only `modelsync.cli` and `modelsync.ui` import from here;
no core module does (tests/test_architecture.py)."""

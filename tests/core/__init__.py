"""Tests of the core modules, one file per module or package."""

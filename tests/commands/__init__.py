"""Tests of the commands, mostly through the real CLI against local servers."""

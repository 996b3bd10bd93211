"""The `vcache` command line. It only parses options and calls the library (`vcache.*`)."""

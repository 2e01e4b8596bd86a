"""The library side of the command line: inspect, convert, pretokenize, and the bundled sample."""

"""runc as ARCH sees it: its command line (parser, one flag table per subcommand) and the calls
ARCH makes to the real runc on its own behalf. Below shim/, checkpoint/ and container/; imports
none of them.
"""

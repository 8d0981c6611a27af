"""The out-of-process worker the Slicer module runs: its line protocol, process handling, client and server."""
